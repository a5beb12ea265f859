"""``mmtrain data pack``: any map-style data set into packed shards (:mod:`mmtrain.data.shards.writer`).

Each sample is decoded once (in ``data.num_workers`` DataLoader workers) to prove it trains: one that cannot be
decoded goes to the ledger with its id instead of into a shard. A sample that decodes is packed as its source
bytes (the media files or the encoded bytes the format read, with their segment times), never re-encoded, so
training from the shards decodes exactly the arrays training from the source decodes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, Dataset, Subset

from mmtrain.core.fileio import atomic_write_bytes
from mmtrain.core.progress import SplitProgress
from mmtrain.data.shards.writer import MediaPart, PackItem, SplitWriter
from mmtrain.data.skips import SkippedSample

_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes of ``"256MB"``, ``"1.5GB"``, ``"512KiB"`` or a plain number."""
    match = _SIZE.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"--shard-size {text!r}: give a size such as 256MB, 1GB or 500000")
    return int(float(match.group(1)) * 1024 ** "BKMGT".index((match.group(2) or "B").upper()))


def _json_ready(value: Any) -> Any:
    """``value`` with NumPy scalars made plain; a field that still is not JSON raises by name later."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value


def _part_of_ref(ref: Any) -> MediaPart:
    path = Path(ref.path)
    return MediaPart(data=path, ext=path.suffix or ref.modality, start=ref.start, end=ref.end)


def pack_item(dataset: Any, index: int) -> PackItem:
    """The packable form of sample ``index`` of a record-based format or ``data=hf_datasets``."""
    from mmtrain.data.formats.common import RecordDataset
    from mmtrain.data.formats.hf_datasets import HFDataset

    names = list(getattr(dataset, "label_names", None) or [])
    if isinstance(dataset, RecordDataset):
        record = dataset.records[index]
        fields = {k: v for k, v in record.fields.items() if k != "id"}
        media = {m: [_part_of_ref(r) for r in refs] if isinstance(refs, tuple) else _part_of_ref(refs)
                 for m, refs in record.media.items() if m in dataset.modalities}
        sample_id = str(record.fields["id"])
    elif isinstance(dataset, HFDataset):
        fields, values, (start, end) = dataset.undecoded(index)
        sample_id = str(fields.pop("id"))
        media = {m: MediaPart(data=value, ext=value.suffix if isinstance(value, Path) else _sniff(value, m),
                              start=start, end=end) for m, value in values.items()}
    else:
        raise ValueError(f"{type(dataset).__name__} cannot be packed: `mmtrain data pack` reads the record formats "
                         "(mp4_label_json, meld, chsims, metadata, instruction, image_pairs) and hf_datasets (parquet "
                         "files: data=hf_datasets data.train.builder=parquet data.train.data_files=...; a mixture: "
                         "pack each source)")
    if "label" in fields and isinstance(fields["label"], int) and names:
        fields["label"] = names[fields["label"]]  # by name: a repack with reordered classes stays right
    return PackItem(id=sample_id, fields=_json_ready(fields), media=media)


def _sniff(data: bytes, modality: str) -> str:
    """A member extension for encoded bytes without a file name (what the container says it is)."""
    import io

    try:
        if modality == "image":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                return (image.format or "img").lower()
        import av

        with av.open(io.BytesIO(data)) as container:
            return container.format.name.split(",")[0]
    except Exception:  # undecodable bytes were skipped before; anything else is named by its modality
        return modality


class _Packable(Dataset):
    """Sample ``i`` decoded (a :class:`SkippedSample` when it cannot be) and, when it can, its pack item with
    media bytes read: the work of a DataLoader worker."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> SkippedSample | PackItem:
        decoded = self.dataset[index]
        if isinstance(decoded, SkippedSample):
            return decoded
        item = pack_item(self.dataset, index)
        for modality, parts in item.media.items():
            item.media[modality] = [_loaded(p) for p in parts] if isinstance(parts, list) else _loaded(parts)
        return item


def _loaded(part: MediaPart) -> MediaPart:
    if isinstance(part.data, Path):
        return MediaPart(data=part.data.read_bytes(), ext=part.ext, start=part.start, end=part.end)
    return part


def _as_is(item: Any) -> Any:
    return item


def pack_split(dataset: Any, target: Path, *, shard_bytes: int, num_workers: int, ledger: Path, split: str,
               source: dict[str, Any], progress: SplitProgress | None = None, share_media: bool = False) -> dict[str, Any]:
    """Pack one split into ``target``; skipped samples are appended to the JSON-lines file ``ledger`` (with
    ``"split"``). An interrupted pack of the same settings goes on from its last finished shard; a split already
    packed with them is kept as it is. ``share_media``: see :class:`~mmtrain.data.shards.writer.SplitWriter`.

    Returns ``{"samples", "skipped", "shards", "bytes", "continued_from"}`` (``continued_from``: the source
    index a continued pack started at, ``None`` for a kept split, else 0).
    """
    if not len(dataset):
        raise ValueError(f"split {split} has no samples to pack")
    first = pack_item(dataset, 0)  # an unpackable format fails here, before any decoding
    modalities = list(dict.fromkeys([*getattr(dataset, "modalities", []), *(["text"] if "text" in first.fields else [])]))
    writer = SplitWriter(target, shard_bytes=shard_bytes, label_names=list(getattr(dataset, "label_names", []) or []),
                         modalities=modalities, source=source, share_media=share_media, source_samples=len(dataset))
    kept = writer.kept
    if kept is not None:
        return {"samples": kept["samples"], "skipped": _ledger_lines(ledger, split, None), "shards": len(kept["shards"]),
                "bytes": sum(s["bytes"] for s in kept["shards"]), "continued_from": None}
    start, lines = writer.position, writer.ledger_lines
    _ledger_lines(ledger, split, lines)  # this split's lines past the finished shards go (they come again)
    loader = DataLoader(Subset(_Packable(dataset), range(start, len(dataset))), batch_size=None,
                        num_workers=num_workers, collate_fn=_as_is)
    with writer, open(ledger, "a") as out:
        for index, item in enumerate(loader, start=start):
            if isinstance(item, SkippedSample):
                lines += 1
                out.write(json.dumps({**item.to_record(), "split": split}) + "\n")
                out.flush()
            else:
                writer.add(item, index, lines)
            if progress is not None:
                progress(split, index + 1, len(dataset))
        writer.close(lines)
    return {"samples": writer.samples, "skipped": lines, "shards": len(writer.shards),
            "bytes": sum(s["bytes"] for s in writer.shards), "continued_from": start}


def _ledger_lines(ledger: Path, split: str, keep: int | None) -> int:
    """Count ``split``'s lines in ``ledger``; with ``keep``, drop those past the first ``keep`` of them."""
    try:
        lines = ledger.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        lines = []
    mine = [i for i, line in enumerate(lines) if json.loads(line).get("split") == split]
    if keep is not None and len(mine) > keep:
        drop = set(mine[keep:])
        atomic_write_bytes(ledger, "".join(l for i, l in enumerate(lines) if i not in drop).encode())
        return keep
    return len(mine)

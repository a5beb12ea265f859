"""Frozen-encoder feature cache: later epochs read encoder outputs from disk instead of running them.

A frozen encoder slot (``model.trainable.<slot>=false``: no gradients, eval mode) maps the same
input to the same output in every epoch; when its input is also deterministic (no train-time
augmentation or modality dropout touching it), its output per sample can be stored once and read
back. :class:`FeatureCache` does that inside :meth:`MultimodalPreTrainedModel.encode_one`:

* **Key.** A slot's outputs live in ``<root>/<slot>/<key>/<split>/<blake2b(sample id)>.safetensors``,
  where ``key`` hashes the format version, the slot's weights (blake2b over every tensor of its
  ``state_dict``: name, dtype, shape, bytes), the encoder's config spec, the processor settings of
  the slot's modality (image size, frame count, normalisation, audio features, tokenizer...),
  the split's data config, the device type, autocast state and the torch version. Anything that
  changes an output changes the key, so a stale entry is never read (invalidation by construction);
  old keys are simply left on disk (delete ``<root>`` to reclaim the space).
* **Eligibility.** Only frozen slots are cached. For the train split a slot is not cached when the
  processor augments its modality (``data.processor.augment`` for image/video) or drops it
  (``data.processor.modality_dropout``): such batches differ every epoch. Val/test collation is
  deterministic, so every frozen slot is cached there. Which slots are cached, and why the others
  are not, is logged once.
* **Entries.** Per sample, unpadded: ``tokens`` [n, D] and ``mask`` [n] (the encoder's output up to
  its last real token), ``pooled`` [D], in the encoder's output dtype (no precision loss); the
  sample id is stored in the metadata and checked on read. Files are written to a temporary name
  and ``os.replace``-d into place, so DDP ranks writing the same entry never expose a partial file.
  Loads go through ``safetensors`` only (no pickle).
* **Batches.** A batch whose samples are all cached is assembled from the files (padded with zeros
  and ``mask=False`` to the length the encoder would have produced); otherwise the encoder runs on
  the whole batch, the missing entries are written, and the batch is returned *as re-assembled from
  the stored values*, so a cold-cache run and a warm-cache run see bit-identical features.
  Presence (``<m>_present``) is applied after the cache, as without it.

Tolerance: stored features are the same floats the encoder produced. Real-token features and
``pooled`` are bit-identical to an uncached forward of the same batch; only padded positions (which
every masked consumer ignores) hold zeros instead of the encoder's values at padding. Across epochs
an uncached run re-pads text to the new batch's longest sample, which can move the last float bits
of an attention encoder's outputs (~1e-7), so metrics of a cached and an uncached run agree to
~1e-5 relative, while two cached runs are identical.

The cache draws no random numbers and needs no state in checkpoints, so resumable training
(:mod:`mmtrain.data.resumable`) is unaffected. :class:`FeatureCacheCallback` tells the cache which
split and sample ids the current batch holds; outside a trainer batch (pre-flight checks, export,
inference) the encoders always run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from safetensors import safe_open
from safetensors.torch import save

from mmtrain.encoders.base import EncoderOutput
from mmtrain.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

#: Bump when the entry layout or key recipe changes: every old entry becomes a miss.
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
#: Modalities whose train-time batches ``data.processor.augment`` changes.
AUGMENTED_MODALITIES = ("image", "video")


def _digest(*parts: Any) -> str:
    """Stable hex digest of JSON-able parts (non-JSON values by ``str``)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def weights_hash(module: torch.nn.Module) -> str:
    """blake2b over every tensor of ``module.state_dict()`` (name, dtype, shape, raw bytes)."""
    h = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tensor_versions(module: torch.nn.Module) -> tuple[Any, ...]:
    """Cheap signature of a module's tensors: any in-place change (``copy_``, ``load_state_dict``)
    bumps ``_version``; any reassignment changes ``data_ptr``."""
    return tuple((name, t.data_ptr(), t._version, t.dtype, tuple(t.shape))
                 for name, t in module.state_dict(keep_vars=True).items())


def tokenizer_hash(tokenizer: Any) -> str:
    """Everything a tokenizer does to text: its full serialised state when fast, else its vocab."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:
        body = json.dumps(sorted(tokenizer.get_vocab().items()))
    return _digest(type(tokenizer).__name__, hashlib.blake2b(body.encode(), digest_size=16).hexdigest(),
                   getattr(tokenizer, "padding_side", None), getattr(tokenizer, "model_max_length", None))


def preprocessing_settings(processor: Any, modality: str) -> dict[str, Any]:
    """The processor settings that shape ``modality``'s encoder input (deterministic part only)."""
    if modality == "image":
        return {"image_size": processor.image_size, "mean": processor.image_mean, "std": processor.image_std}
    if modality == "video":
        return {"image_size": processor.image_size, "num_frames": processor.num_frames,
                "mean": processor.image_mean, "std": processor.image_std}
    if modality == "audio":
        extractor = processor.feature_extractor
        facts = {k: v for k, v in extractor.to_dict().items() if isinstance(v, (int, float, str, bool, type(None)))}
        return {"audio_format": processor.audio_format, "extractor": facts}
    if modality == "text":
        return {"max_text_length": processor.max_text_length, "tokenizer": tokenizer_hash(processor.tokenizer),
                "prompt": getattr(processor, "prompt", None)}
    raise ValueError(f"unknown modality '{modality}'")


def train_randomness(processor: Any, modality: str) -> str | None:
    """Why train batches of ``modality`` differ between epochs (so cannot be cached), or ``None``."""
    reasons = []
    augment = getattr(processor, "augment", None)
    if modality in AUGMENTED_MODALITIES and augment:
        reasons.append(f"data.processor.augment ({', '.join(sorted(augment))})")
    dropout = (getattr(processor, "modality_dropout", None) or {}).get(modality, 0.0)
    if dropout > 0:
        reasons.append(f"data.processor.modality_dropout.{modality}={dropout}")
    return " and ".join(reasons) or None


@dataclass
class CacheStats:
    """Per ``(split, slot)`` sample counts: ``hits`` read from disk, ``misses`` encoded, ``writes`` stored."""

    hits: dict[tuple[str, str], int] = field(default_factory=dict)
    misses: dict[tuple[str, str], int] = field(default_factory=dict)
    writes: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, table: dict[tuple[str, str], int], split: str, slot: str, count: int) -> None:
        table[(split, slot)] = table.get((split, slot), 0) + count

    def total(self, name: str) -> int:
        return sum(getattr(self, name).values())


class FeatureCache:
    """On-disk cache of frozen encoders' outputs; see the module docstring.

    Args:
        root: cache folder (e.g. ``<data_root>/.feature_cache``).
        model: the model whose frozen slots are cached (its ``feature_cache`` attribute is set by
            :meth:`attach`).
        processor: the data processor (its settings are part of the keys).
        data_specs: per split, the data config that produced its samples (hashed into the keys;
            e.g. the resolved ``data.<split>`` node).
    """

    def __init__(self, root: str | Path, model: Any, processor: Any,
                 data_specs: Mapping[str, Any] | None = None) -> None:
        from mmtrain.hf.base import modality_of

        self.root = Path(root)
        self.model = model
        self.processor = processor
        self.data_specs = {str(k): v for k, v in (data_specs or {}).items()}
        self.stats = CacheStats()
        self.active: tuple[str, list[str]] | None = None
        self._weights: dict[str, tuple[tuple[Any, ...], str]] = {}
        self.reasons: dict[tuple[str, str], str] = {}  # (split, slot) -> why it is not cached
        for slot in model.encoders:
            modality = modality_of(slot)
            for split in SPLITS:
                if slot not in model.frozen:
                    self.reasons[(split, slot)] = "trainable (model.trainable)"
                elif split == "train" and (why := train_randomness(processor, modality)):
                    self.reasons[(split, slot)] = f"train batches are random: {why}"

    # -- wiring -------------------------------------------------------------------------------

    def attach(self) -> "FeatureCache":
        """Make ``model.encode_one`` consult this cache; logs the cached and uncached slots."""
        self.model.feature_cache = self
        for split in SPLITS:
            cached = [s for s in self.model.encoders if (split, s) not in self.reasons]
            skipped = [f"{s} ({self.reasons[(split, s)]})" for s in self.model.encoders if (split, s) in self.reasons]
            log.info("feature cache %s: cached slots %s; not cached: %s", split, cached or "none",
                     "; ".join(skipped) or "none")
        return self

    def cached_slots(self, split: str) -> list[str]:
        return [s for s in self.model.encoders if (split, s) not in self.reasons]

    # -- keys ---------------------------------------------------------------------------------

    def weights_key(self, slot: str) -> str:
        """The slot's weight hash, recomputed only when one of its tensors changed."""
        encoder = self.model.encoders[slot]
        versions = _tensor_versions(encoder)
        known = self._weights.get(slot)
        if known is None or known[0] != versions:
            known = (versions, weights_hash(encoder))
            self._weights[slot] = known
        return known[1]

    def slot_key(self, slot: str, split: str, device: torch.device) -> str:
        """The key of ``slot``'s entries for ``split``: every fact that can change its outputs."""
        from mmtrain.hf.base import modality_of

        spec = (self.model.config.encoders or {}).get(slot)
        autocast = (torch.is_autocast_enabled(device.type),
                    str(torch.get_autocast_dtype(device.type)) if torch.is_autocast_enabled(device.type) else None)
        return _digest(FORMAT_VERSION, self.weights_key(slot), spec,
                       preprocessing_settings(self.processor, modality_of(slot)),
                       split, self.data_specs.get(split), device.type, autocast, torch.__version__)

    def entry_dir(self, slot: str, split: str, key: str) -> Path:
        return self.root / slot / key / split

    @staticmethod
    def entry_name(sample_id: str) -> str:
        return hashlib.blake2b(sample_id.encode(), digest_size=16).hexdigest() + ".safetensors"

    # -- encode -------------------------------------------------------------------------------

    def encode(self, slot: str, run: Callable[[], EncoderOutput], inputs: Mapping[str, Any]) -> EncoderOutput:
        """``slot``'s raw output (before presence) for the current batch, from disk when possible."""
        if self.active is None or (self.active[0], slot) in self.reasons or slot not in self.model.frozen:
            return run()
        split, ids = self.active
        first = next(v for v in inputs.values() if isinstance(v, torch.Tensor))
        rows = int(first.shape[0])
        if rows != len(ids):
            if not ids or rows % len(ids):
                return run()
            k = rows // len(ids)  # item axis flattened (pairs): row b*K + j is item j of sample b
            ids = [f"{i}#{j}" for i in ids for j in range(k)]
        input_length = int(first.shape[1]) if first.dim() > 1 else None
        key = self.slot_key(slot, split, first.device)
        folder = self.entry_dir(slot, split, key)
        entries = [self._read(folder / self.entry_name(i), i) for i in ids]
        if all(e is not None for e in entries):
            self.stats.add(self.stats.hits, split, slot, len(ids))
            return _assemble(entries, input_length, first.device)  # type: ignore[arg-type]
        self.stats.add(self.stats.misses, split, slot, len(ids))
        output = run()
        fresh = _split_rows(output, input_length)
        folder.mkdir(parents=True, exist_ok=True)
        for sample_id, entry, old in zip(ids, fresh, entries):
            if old is None:
                self._write(folder / self.entry_name(sample_id), sample_id, slot, key, entry)
                self.stats.add(self.stats.writes, split, slot, 1)
        return _assemble(fresh, input_length, first.device)

    def _read(self, path: Path, sample_id: str) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("id") != sample_id:
                    return None
                entry: dict[str, Any] = {name: f.get_tensor(name) for name in ("tokens", "mask", "pooled")}
        except Exception as err:  # a torn or foreign file: recompute it
            log.warning("feature cache: unreadable entry %s (%s); recomputing", path, err)
            return None
        entry["length"] = int(meta["length"])
        entry["input_length"] = int(meta["input_length"]) if meta.get("input_length") else None
        return entry

    @staticmethod
    def _write(path: Path, sample_id: str, slot: str, key: str, entry: Mapping[str, Any]) -> None:
        """Atomic: a temporary file in the same folder, then ``os.replace``."""
        meta = {"id": sample_id, "slot": slot, "key": key, "version": str(FORMAT_VERSION),
                "length": str(entry["length"]), "input_length": str(entry["input_length"] or "")}
        atomic_write_bytes(path, save({k: entry[k].contiguous() for k in ("tokens", "mask", "pooled")}, metadata=meta))

    def summary(self) -> dict[str, Any]:
        """Hit/miss/write counts per ``split/slot`` and in total."""
        def table(t: dict[tuple[str, str], int]) -> dict[str, int]:
            return {f"{split}/{slot}": n for (split, slot), n in sorted(t.items())}
        return {"hits": table(self.stats.hits), "misses": table(self.stats.misses),
                "writes": table(self.stats.writes),
                "cached_slots": {split: self.cached_slots(split) for split in SPLITS}}


def _split_rows(output: EncoderOutput, input_length: int | None) -> list[dict[str, Any]]:
    """Per-sample unpadded entries: tokens/mask up to the last real token, pooled."""
    tokens = output.tokens.detach().to("cpu")
    mask = output.mask.detach().to("cpu").bool()
    pooled = output.pooled.detach().to("cpu")
    length = int(tokens.shape[1])
    rows = []
    for b in range(tokens.shape[0]):
        real = mask[b].nonzero()
        n = int(real[-1]) + 1 if real.numel() else 0
        rows.append({"tokens": tokens[b, :n].clone(), "mask": mask[b, :n].clone(), "pooled": pooled[b].clone(),
                     "length": length, "input_length": input_length})
    return rows


def _assemble(entries: Sequence[Mapping[str, Any]], input_length: int | None, device: torch.device) -> EncoderOutput:
    """A padded batch from per-sample entries.

    Length: as the encoder would produce it for this batch. An encoder whose token count follows the
    padded input (text: one token per input id) gets the current input's length; a fixed-length one
    (frames, audio windows) its stored length; anything else the longest stored entry.
    """
    follows_input = all(e["input_length"] is not None and e["length"] == e["input_length"] for e in entries)
    fixed = {e["length"] for e in entries}
    longest = max(int(e["tokens"].shape[0]) for e in entries)
    if follows_input and input_length is not None:
        length = input_length
    elif len(fixed) == 1 and not follows_input:
        length = fixed.pop()
    else:
        length = longest
    length = max(length, longest)
    first = entries[0]
    dim = int(first["tokens"].shape[-1])
    tokens = torch.zeros(len(entries), length, dim, dtype=first["tokens"].dtype)
    mask = torch.zeros(len(entries), length, dtype=torch.bool)
    for b, e in enumerate(entries):
        n = int(e["tokens"].shape[0])
        tokens[b, :n] = e["tokens"]
        mask[b, :n] = e["mask"]
    pooled = torch.stack([e["pooled"] for e in entries])
    return EncoderOutput(tokens=tokens.to(device), mask=mask.to(device), pooled=pooled.to(device))


class FeatureCacheCallback(pl.Callback):
    """Tells the cache the split and sample ids of each batch; logs the counts at the end of a stage."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache

    def _start(self, split: str, batch: Any) -> None:
        ids = batch.get("ids") if isinstance(batch, Mapping) else None
        self.cache.active = (split, [str(i) for i in ids]) if ids else None

    def _end(self, *args: Any, **kwargs: Any) -> None:
        self.cache.active = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start("train", batch)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                                  batch_idx: int, dataloader_idx: int = 0) -> None:
        self._start("val", batch)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                            batch_idx: int, dataloader_idx: int = 0) -> None:
        self._start("test", batch)

    on_train_batch_end = on_validation_batch_end = on_test_batch_end = _end  # type: ignore[assignment]

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.cache.active = None
        s = self.cache.stats
        log.info("feature cache: %d samples read, %d encoded, %d stored (%s)", s.total("hits"), s.total("misses"),
                 s.total("writes"), self.cache.root)


def setup_feature_cache(settings: Mapping[str, Any] | None, model: Any, datamodule: Any,
                        data_specs: Mapping[str, Any] | None = None) -> FeatureCacheCallback | None:
    """From the ``feature_cache`` config node: the attached cache's callback, or ``None`` when off.

    ``settings``: ``{enabled: bool, dir: path}``.
    """
    if not settings or not settings.get("enabled"):
        return None
    if not getattr(model, "frozen", None):
        log.info("feature_cache.enabled, but no encoder is frozen (model.trainable.<slot>=false): nothing to cache")
        return None
    cache = FeatureCache(settings["dir"], model, datamodule.processor, data_specs).attach()
    return FeatureCacheCallback(cache)

"""Build the "spoken digits" demo set: ``build_demo`` (always) and ``ensure_demo`` (only when needed).

The set is written to a hidden temporary folder beside ``root`` and renamed into place at the end,
so an interrupted build never leaves a folder that looks complete; ``manifest.json`` is its last file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from mmtrain.data.demo.images import DEFAULT_SOURCES, build_pools
from mmtrain.data.demo.mux import write_mp4
from mmtrain.data.demo.plan import ClipPlan, plan_split, render_clip
from mmtrain.data.demo.spec import (
    DATASET_NAME,
    FORMAT_VERSION,
    MEDIA,
    MODALITIES,
    SIZES,
    SPLITS,
    WORDS,
    CorruptionConfig,
)
from mmtrain.data.demo.views import Item, clip_labels, write_item_media, write_json, write_split_views
from mmtrain.data.demo.spec import SOUNDS_DIR
from mmtrain.data.demo.voices import VoiceBank, voices_by_split

Progress = Callable[[str, int, int], None]  # (split, clips done, clips in split)
FOLDERS = ("videos", "labels", "images", "audio")
TABLE_FOLDERS = ("parquet", "pairs", "metadata", "instruction")

log = logging.getLogger(__name__)


def parameters(seed: int, size: str, corruption: CorruptionConfig | None, image_sources: str) -> dict:
    """What the content depends on; ``ensure_demo`` rebuilds when any of it differs."""
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; choose from {sorted(SIZES)}")
    return {"seed": int(seed), "size": size, "image_sources": image_sources,
            "corruption": (corruption or CorruptionConfig()).to_dict()}


def build_demo(
    root: str | Path,
    *,
    seed: int = 0,
    size: str = "small",
    corruption: CorruptionConfig | None = None,
    image_sources: str = DEFAULT_SOURCES,
    sounds_dir: str | Path = SOUNDS_DIR,
    espeak: str | None = None,
    workers: int = 2,
    progress: Progress | None = None,
) -> Path:
    """Build the demo set into ``root`` (replacing an earlier demo set there) and return ``root``.

    Args:
        seed: everything random follows from it; the same seed gives the same files.
        size: ``"tiny"`` (4/2/2 clips, for tests) or ``"small"`` (300/50/50 clips of 4 segments).
        corruption: per-modality corruption probabilities and kinds (default ``CorruptionConfig()``).
        image_sources: ``"sklearn"`` (scikit-learn's digits only: the same set on every machine), a comma
            list of sources that must be present (test images by other writers), or ``"auto"`` (whichever
            of them is installed; the set then depends on the machine).
        sounds_dir: folder of the asterisk voices (``<voice>/digits/<d>.wav``).
        espeak: the espeak-ng program (default: ``espeak-ng`` on PATH).
        workers: threads rendering and encoding clips.
        progress: called after each clip with ``(split, done, total)``.

    Raises:
        DemoSourceError: a voice or image source is missing (the message names the package).
        FileExistsError: ``root`` holds something other than a demo set.
    """
    root = Path(root).expanduser().absolute()
    params = parameters(seed, size, corruption, image_sources)
    corruption = CorruptionConfig.from_dict(params["corruption"])
    _check_replaceable(root)
    bank = VoiceBank(sounds_dir=Path(sounds_dir), espeak=espeak, rate=MEDIA.sample_rate)
    pools = build_pools(image_sources)
    voices = voices_by_split()
    plans = {split: plan_split(split, clips=SIZES[size].clips(split), seed=seed, pool=pools[split],
                               voices=voices[split], corruption=corruption, media=MEDIA) for split in SPLITS}
    bank.prefetch(set().union(*(p.voice_keys() for split in SPLITS for p in plans[split])))
    root.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
    try:
        files: list[Path] = []
        for folder in TABLE_FOLDERS:
            (scratch / folder).mkdir()
        for split in SPLITS:
            items = _write_clips(scratch, split, plans[split], bank, workers, progress)
            files += sorted((scratch / "labels" / split).glob("*.json"))
            files += write_split_views(scratch, split, items, seed, row_group_size=SIZES[size].row_group_size)
        sources = {"voices": {s: {k: [v.id for v in group] for k, group in voices[s].items()} for s in SPLITS},
                   "images": {s: pools[s].description for s in SPLITS}}
        manifest = _manifest(params, sources, plans, scratch, files)
        write_json(scratch / "manifest.json", manifest)
        _swap_into_place(scratch, root)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return root


def ensure_demo(root: str | Path, seed: int = 0, size: str = "small", **options) -> Path:
    """Return ``root`` at once when it holds a demo set built with these parameters (its manifest
    matches and every annotation file it lists exists); else build it (``options`` as in
    ``build_demo``)."""
    root = Path(root).expanduser().absolute()
    wanted = parameters(seed, size, options.get("corruption"), options.get("image_sources", DEFAULT_SOURCES))
    manifest = read_manifest(root)
    if (manifest is not None and manifest.get("format_version") == FORMAT_VERSION
            and manifest.get("parameters") == wanted
            and all((root / name).is_file() for name in manifest.get("files", {}))):
        return root
    log.info("building the spoken-digits demo set (size %s, seed %d) at %s; this happens once", size, seed, root)
    if options.get("progress") is not None:
        return build_demo(root, seed=seed, size=size, **options)
    from mmtrain.data.demo.progress import clip_progress

    with clip_progress() as progress:  # bars on a terminal, a line per split in logs
        return build_demo(root, seed=seed, size=size, **{**options, "progress": progress})


def read_manifest(root: str | Path) -> dict | None:
    """The manifest of a demo set, or ``None`` when there is none (or it is unreadable)."""
    path = Path(root) / "manifest.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("name") == DATASET_NAME else None


def _write_clips(
    root: Path, split: str, plans: list[ClipPlan], bank: VoiceBank, workers: int, progress: Progress | None
) -> list[Item]:
    """Render, encode and label every clip of a split; write the items' PNG and WAV files."""
    for folder in FOLDERS:
        (root / folder / split).mkdir(parents=True, exist_ok=True)

    def one(plan: ClipPlan) -> list[Item]:
        clip = render_clip(plan, bank, MEDIA)
        write_mp4(root / "videos" / split / f"{plan.name}.mp4", clip.frames, clip.audio, fps=MEDIA.fps,
                  sample_rate=MEDIA.sample_rate, gop=MEDIA.frames_per_segment, crf=MEDIA.crf,
                  audio_bit_rate=MEDIA.audio_bit_rate)
        write_json(root / "labels" / split / f"{plan.name}.json", clip_labels(plan, MEDIA))
        return write_item_media(root, plan, clip.clean_audio, MEDIA)

    items: list[Item] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done, clip_items in enumerate(pool.map(one, plans), start=1):
            items += clip_items
            if progress is not None:
                progress(split, done, len(plans))
    return items


def _rates(plans: list[ClipPlan]) -> dict:
    segments = [s for p in plans for s in p.segments]
    total = max(1, len(segments))
    rates: dict = {m: round(sum(m in s.corruption for s in segments) / total, 4) for m in MODALITIES}
    rates["none"] = round(sum(not s.corruption for s in segments) / total, 4)
    rates["two"] = round(sum(len(s.corruption) == 2 for s in segments) / total, 4)
    rates["kinds"] = {m: dict(sorted(Counter(s.corruption[m] for s in segments if m in s.corruption).items()))
                      for m in MODALITIES}
    return rates


def _manifest(params: dict, sources: dict, plans: dict[str, list[ClipPlan]], root: Path, files: list[Path]) -> dict:
    counts = {}
    for split, split_plans in plans.items():
        labels = Counter(s.label for p in split_plans for s in p.segments)
        counts[split] = {"clips": len(split_plans), "segments": sum(labels.values()),
                         "per_class": {WORDS[d]: labels.get(d, 0) for d in range(10)}}
    used = {split: {"speakers": sorted({p.voice.id for p in split_plans}),
                    "image_sources": sorted({s.image.source for p in split_plans for s in p.segments})}
            for split, split_plans in plans.items()}
    return {
        "name": DATASET_NAME, "format_version": FORMAT_VERSION, "mmtrain_version": _version(),
        "parameters": params, "media": asdict(MEDIA), "sources": {**sources, "used": used},
        "counts": counts, "corruption_rates": {split: _rates(p) for split, p in plans.items()},
        "files": {path.relative_to(root).as_posix(): _sha256(path) for path in files},
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _version() -> str:
    from mmtrain import __version__

    return __version__


def _check_replaceable(root: Path) -> None:
    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a folder; choose another demo root")
    if any(root.iterdir()) and read_manifest(root) is None:
        raise FileExistsError(f"{root} is not empty and holds no demo set (no manifest.json of {DATASET_NAME}); "
                              "refusing to replace it: choose an empty or new folder")


def _swap_into_place(built: Path, root: Path) -> None:
    """Rename the finished folder to ``root``; an older set there is moved aside, then deleted."""
    old = None
    if root.exists():
        old = root.with_name(f".{root.name}.old-{os.getpid()}")
        root.rename(old)
    built.rename(root)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

"""``mmtrain data pack [overrides] --out DIR``: the composed config's splits into packed shards.

Writes ``DIR/<split>/`` (``shards.json``, ``NNNNN.tar``, ``NNNNN.idx.json``; :mod:`mmtrain.data.shards.layout`)
for every split of the data config (the same overrides as ``mmtrain train``), and ``DIR/skipped.jsonl``: the
samples left out because their media cannot be decoded, one JSON line each. Interrupted (an error, Ctrl-C, a
kill), the same command goes on from each split's last finished shard and keeps the splits it finished. Train
from the result with
``shards.source=DIR`` (a folder, or the same files under an ``https://`` or ``s3://`` URL).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def add_cli(subparsers: argparse._SubParsersAction, composes: Any) -> argparse.ArgumentParser:
    """Register ``pack`` as a sub-command of ``mmtrain data``; ``composes`` adds the config arguments."""
    parser = subparsers.add_parser("pack", help="write the config's splits as packed shards (local, HTTP, S3)",
                                   description=__doc__.splitlines()[0])
    composes(parser)
    add_shard_arguments(parser, "output folder: <out>/<split>/ per split")
    parser.add_argument("--share-media", action="store_true", help=(
        "store a media file used by several samples of a shard once (the segments of one long video): smaller "
        "shards that only mmtrain reads whole (other WebDataset readers see those samples without media)"))
    parser.set_defaults(func=run)
    return parser


def add_shard_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    """``--out``, ``--shard-size`` and ``--splits``: what the commands that write shards of a config's splits take."""
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--shard-size", default="256MB", help="bytes per shard, e.g. 64MB, 1GB (default: %(default)s)")
    parser.add_argument("--splits", default=None, help="comma-separated splits (default: all of the config's)")


def comma_list(text: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; ``None`` (all) when not given."""
    return [s.strip() for s in text.split(",") if s.strip()] if text else None


def pack_config(cfg: Any, *, out: Path, shard_bytes: int, splits: list[str] | None = None,
                progress: Any = None, share_media: bool = False) -> dict[str, dict[str, Any]]:
    """Pack the composed config's splits under ``out``; returns each split's counts and seconds."""
    from mmtrain.config.targets import allow_prefixes, runtime_prefixes
    from mmtrain.config.validate import validate_config
    from mmtrain.data.shards.pack import pack_split
    from mmtrain.engine.build import build_data

    allow_prefixes(cfg.get("allowed_target_prefixes") or [])
    prefixes = runtime_prefixes()
    validate_config(cfg, prefixes, ("data",))
    datamodule = build_data(cfg, prefixes)
    chosen = splits or list(datamodule.splits)
    unknown = [s for s in chosen if s not in datamodule.splits]
    if unknown:
        raise ValueError(f"--splits {unknown}: the config has splits {list(datamodule.splits)}")
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for split in chosen:
        began = time.perf_counter()
        source = {"data": str(cfg.data.get(split, {}).get("_target_", "")), "split": split}
        results[split] = pack_split(datamodule.splits[split], out / split, shard_bytes=shard_bytes,
                                    num_workers=datamodule.num_workers, ledger=out / "skipped.jsonl", split=split,
                                    source=source, progress=progress, share_media=share_media)
        results[split]["seconds"] = time.perf_counter() - began
    return results


def run(args: argparse.Namespace) -> int:
    """Pack, print a table per split; returns the exit code."""
    from rich.console import Console
    from rich.table import Table

    from mmtrain.config.compose import compose_config
    from mmtrain.core.progress import split_bars
    from mmtrain.data.shards.pack import parse_size

    console = Console()
    shard_bytes = parse_size(args.shard_size)
    cfg = compose_config(args.overrides, config_dir=args.config_dir)
    out = Path(args.out)
    splits = comma_list(args.splits)
    with split_bars(console, lambda split: f"packing {split}") as progress:
        results = pack_config(cfg, out=out, shard_bytes=shard_bytes, splits=splits, progress=progress,
                              share_media=args.share_media)
    table = Table(title=f"packed into {out}")
    for column in ("split", "samples", "skipped", "shards", "MB", "seconds"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, r in results.items():
        note = " (kept: packed before)" if r["continued_from"] is None else (
            f" (continued at sample {r['continued_from']})" if r["continued_from"] else "")
        table.add_row(split + note, str(r["samples"]), str(r["skipped"]), str(r["shards"]), f"{r['bytes'] / 1e6:.1f}",
                      f"{r['seconds']:.1f}")
    console.print(table)
    console.print(f"skipped samples, one JSON line each: {out / 'skipped.jsonl'}", soft_wrap=True)
    console.print(f"train from it: mmtrain train ... shards.source={out}", soft_wrap=True)
    return 0

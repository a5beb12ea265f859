"""``mmtrain train``: validate the composed config, build everything, fit, test, export."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf, open_dict

from mmtrain.config.targets import allow_prefixes, runtime_prefixes
from mmtrain.config.validate import check_signature, validate_config
from mmtrain.report.html import write_report
from mmtrain.training.ledger import SkipLedger
from mmtrain.training.build import (
    build_callbacks,
    build_data,
    build_loggers,
    build_model,
    build_task,
    check_model_fits_data,
    token_budget,
    wire_processor,
)

log = logging.getLogger(__name__)

BUILT_SECTIONS = ("data", "model", "task", "callbacks", "logger")
#: Trainer arguments mmtrain sets itself from other config sections.
TRAINER_INJECTED = frozenset({"callbacks", "logger", "default_root_dir"})


def make_run_dir(cfg: DictConfig) -> Path:
    """``run_dir`` if set, else ``<output_root>/<name>/<timestamp>`` (a suffix if it exists)."""
    if cfg.get("run_dir"):
        run_dir = Path(str(cfg.run_dir))
    else:
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        base = Path(str(cfg.output_root)) / str(cfg.name) / stamp
        run_dir, suffix = base, 1
        while run_dir.exists():
            run_dir, suffix = base.with_name(f"{stamp}_{suffix}"), suffix + 1
    run_dir = run_dir.resolve()
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return run_dir


def prepare(cfg: DictConfig) -> tuple[DictConfig, tuple[str, ...]]:
    """Allowlist and validate before any directory or import: nothing is built from a bad config."""
    allow_prefixes(cfg.get("allowed_target_prefixes") or [])
    prefixes = runtime_prefixes()
    if not cfg.get("run_dir"):
        with open_dict(cfg):
            cfg.run_dir = "<unset>"  # lets ${run_dir} resolve during validation
        validate_config(cfg, prefixes, BUILT_SECTIONS)
        with open_dict(cfg):
            cfg.run_dir = None
    else:
        validate_config(cfg, prefixes, BUILT_SECTIONS)
    check_signature("trainer", cfg.trainer, pl.Trainer, TRAINER_INJECTED)
    return cfg, prefixes


def build_trainer(cfg: DictConfig, prefixes: tuple[str, ...], run_dir: Path) -> pl.Trainer:
    """Lightning ``Trainer`` from ``cfg.trainer`` with the configured callbacks and loggers."""
    loggers = build_loggers(cfg, prefixes)
    callbacks = build_callbacks(cfg, prefixes)
    if not loggers:
        dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
        callbacks = [c for c in callbacks if c not in dropped]
        if dropped:
            log.info("no logger configured: the learning-rate monitor is off")
    return pl.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(run_dir),
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
        results[name] = {k: task.results["test"][k] for k in ("acc", "macro_f1")}
    return results


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run a whole training job; returns the metrics also written to ``metrics.json``."""
    cfg, prefixes = prepare(cfg)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = build_data(cfg, prefixes)
    model = build_model(cfg, datamodule.label_names, prefixes, facts=datamodule.processor.model_facts())
    wire_processor(datamodule.processor, model)
    budget = token_budget(datamodule, model)
    check_model_fits_data(model, datamodule.processor, datamodule.splits["train"])
    task = build_task(cfg, prefixes, model, datamodule.label_names, datamodule.processor)

    run_dir = make_run_dir(cfg)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    log.info("run directory: %s", run_dir)
    trainer = build_trainer(cfg, prefixes, run_dir)

    started = time.perf_counter()
    trainer.fit(task, datamodule=datamodule)
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
    if "test" in datamodule.splits:
        trainer.test(task, datamodule=datamodule, verbose=False)
        fused = task.results["test"]
        if cfg.get("evaluate_unimodal") and getattr(task, "supports_only_modality", False) and len(model.encoders) > 1:
            metrics["test_only_one_modality"] = unimodal_results(trainer, task, datamodule)
        task.results["test"] = fused
    metrics.update({split: task.results[split] for split in ("val", "test") if split in task.results})
    if budget:
        metrics["token_budget"] = budget
    ledger = next((c for c in trainer.callbacks if isinstance(c, SkipLedger)), None)
    if ledger is not None:
        metrics["skipped"] = ledger.summary()
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_report(run_dir)
    return metrics

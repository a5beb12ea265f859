"""The Python API: compose, train, evaluate, predict and export from a notebook or a script.

Every call leaves the process as it found it: the global RNG streams (Python, NumPy, torch), the
environment variables, torch's thread count and the warnings filters are restored when it returns
or raises (:func:`process_state_kept`), and no speed setting of :mod:`mmtrain.app.perf` is applied
unless ``perf=True``. ::

    import mmtrain

    result = mmtrain.train(["experiment=demo", "trainer.max_epochs=1"])
    print(result.metrics["test"]["acc"], result.run_dir)
    mmtrain.predict(result.export_dir, video="clip.mp4", audio="clip.mp4", text="seven")
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What a training run left: its directory and the metrics of ``metrics.json`` (or, for a staged
    pipeline, ``{"stages": {name: metrics}}``)."""

    run_dir: Path
    metrics: dict[str, Any]

    @property
    def export_dir(self) -> Path:
        """The run's ``export/`` folder (``save_pretrained`` of the best weights)."""
        return self.run_dir / "export"


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """Runs a block and then puts back what a training run changes for the whole process: the global
    RNG states, ``os.environ``, torch's intra-op thread count and the warnings filters."""
    import numpy as np
    import torch

    rng = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    environ = dict(os.environ)
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            yield
    finally:
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        os.environ.update({k: v for k, v in environ.items() if os.environ.get(k) != v})
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def compose(overrides: Sequence[str] = (), *, config_dir: str | Path | None = None) -> DictConfig:
    """The training config ``mmtrain train <overrides>`` would use (Hydra syntax: ``experiment=demo``,
    ``model/fusion=gated``, ``trainer.max_epochs=2``); ``config_dir`` adds your own config groups."""
    from mmtrain.config.compose import compose_config

    return compose_config(list(overrides), config_dir=str(config_dir) if config_dir else None)


def train(overrides: Sequence[str] | DictConfig = (), *, config_dir: str | Path | None = None,
          perf: bool = False) -> RunResult:
    """Train as ``mmtrain train <overrides>`` does (a staged pipeline too); returns the run directory
    and its metrics. ``perf=True`` applies the config's ``perf`` settings in-process for the run
    (``lightning_fixes``, ``gc_freeze``; ``malloc`` needs a new process and is ignored here)."""
    from mmtrain.app.commands.train import train as train_config
    from mmtrain.app.perf import PerfSettings

    with process_state_kept():
        cfg = overrides if isinstance(overrides, DictConfig) else compose(overrides, config_dir=config_dir)
        settings = PerfSettings.from_config(cfg.get("perf")) if perf else PerfSettings()
        settings = dataclasses.replace(settings, malloc=False)
        if cfg.get("stages"):
            from mmtrain.app.commands.stages import run_stages

            if isinstance(overrides, DictConfig):
                raise ValueError("a staged pipeline (stages=...) is composed per stage: pass its overrides, not a config")
            summary = run_stages(cfg, list(overrides), lambda o: compose(o, config_dir=config_dir),
                                 lambda c: train_config(c, perf=settings))
            return RunResult(run_dir=Path(summary["run_dir"]), metrics={"stages": summary["stages"]})
        metrics = train_config(cfg, perf=settings)
    return RunResult(run_dir=Path(metrics["run_dir"]), metrics=metrics)


def evaluate(path: str | Path, *, split: str = "test", overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Metrics of a run directory or export folder on a data split (``mmtrain eval``)."""
    from mmtrain.app.commands.evaluate import evaluate as evaluate_run

    with process_state_kept():
        return evaluate_run(path, split=split, overrides=list(overrides))


def predict(export_dir: str | Path, **inputs: Any) -> dict[str, Any]:
    """One sample through an exported model (``mmtrain predict``): ``video=``, ``audio=``, ``image=``
    (a path or a list of paths), ``text=``, ``choices=``, ``max_new_tokens=``."""
    from mmtrain.app.commands.predict import predict as predict_one

    with process_state_kept():
        return predict_one(export_dir, **inputs)


def predict_many(export_dir: str | Path, *, out: str | Path, data: str | Path | None = None,
                 **options: Any) -> dict[str, Any]:
    """Many samples through an exported model into ``out`` (``mmtrain predict --data ... --out ...``):
    ``data`` a folder of media files, a data config YAML or ``None`` (the training data's ``split=``);
    ``split=``, ``batch_size=``, ``num_workers=``, ``overrides=``, ``choices=``, ``max_new_tokens=``.
    Returns ``{"out", "rows", "errors", "source"}`` (+ ``accuracy`` where the data has class labels)."""
    from mmtrain.app.commands.predict_batch import predict_many as predict_batch

    with process_state_kept():
        return predict_batch(export_dir, out=out, data=data, **options)


def export(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """A ``save_pretrained`` folder from a training checkpoint (``mmtrain export``)."""
    from mmtrain.app.commands.evaluate import export_checkpoint

    with process_state_kept():
        return export_checkpoint(checkpoint, out)

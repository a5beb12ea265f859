"""Multi-stage runs: one command trains several configs in order, later ones using earlier runs.

A config with a non-empty ``stages`` mapping is a pipeline: each entry is a stage name and the
Hydra overrides that turn the pipeline's own config into that stage's config::

    stages:
      video: [~model/encoders/audio, ~model/encoders/text, model/fusion=identity]
      fusion: ["+model.init.video=${stage:video}", "model.trainable={video: false}"]

Stage ``s`` is composed from its own overrides, then the command line's (which therefore win:
``trainer.max_epochs=1`` on the command line reaches every stage), then ``stages=null``, and
trained into ``<pipeline run dir>/<s>``. ``${stage:<name>}`` resolves to the run directory of an
earlier stage of the same pipeline (``model.init`` accepts run directories). A stage that fails stops the pipeline; the finished stages' runs and
``stages.json`` stay.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmtrain.config.resolvers import pipeline_root
from mmtrain.app.report.html import write_report
from mmtrain.app.commands.train import make_run_dir

log = logging.getLogger(__name__)


def stage_overrides(cfg: DictConfig) -> dict[str, list[str]]:
    """The pipeline's stages (name -> overrides), read without resolving ``${stage:...}``."""
    raw = OmegaConf.to_container(cfg.stages, resolve=False)
    if not isinstance(raw, dict) or not raw:
        raise ValueError("stages must map stage names to lists of overrides.")
    stages: dict[str, list[str]] = {}
    for name, overrides in raw.items():
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise ValueError(f"stages.{name} must be a list of override strings, got {overrides!r}")
        if "/" in str(name) or str(name) in (".", ".."):
            raise ValueError(f"stages: '{name}' is not usable as a folder name.")
        stages[str(name)] = list(overrides)
    return stages


def run_stages(
    cfg: DictConfig,
    overrides: Sequence[str],
    compose: Callable[[list[str]], DictConfig],
    train: Callable[[DictConfig], dict[str, Any]],
) -> dict[str, Any]:
    """Train every stage of the pipeline ``cfg`` (composed from ``overrides``) in order.

    Args:
        cfg: the composed pipeline config (``stages`` non-empty).
        overrides: the command line's overrides that composed ``cfg``.
        compose: overrides -> composed config (the same config folders as ``cfg``).
        train: runs one training job, returns its metrics.

    Returns:
        ``{"run_dir": <pipeline dir>, "stages": {name: metrics}}``, also written to ``stages.json``.
    """
    stages = stage_overrides(cfg)
    root = make_run_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.yaml").write_text(OmegaConf.to_yaml(cfg))
    summary: dict[str, Any] = {"run_dir": str(root), "stages": {}}
    with pipeline_root(root):
        for name, extra in stages.items():
            log.info("stage %s: %s", name, " ".join(extra) or "(no overrides)")
            stage_cfg = compose([*extra, *overrides, "stages=null", f"run_dir={root / name}"])
            summary["stages"][name] = train(stage_cfg)
            (root / "stages.json").write_text(json.dumps(summary, indent=2))
            write_report(root)
    return summary

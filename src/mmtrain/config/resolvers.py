"""OmegaConf resolvers mmtrain's YAML may use; registered when configs are composed.

``${stage:<name>}``: the run directory of stage ``<name>`` of the pipeline being run (see
:mod:`mmtrain.app.commands.stages`), e.g. ``+model.init.video=${stage:video}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

_PIPELINES: list[Path] = []  # run dirs of the pipelines being run (innermost last)


@contextmanager
def pipeline_root(root: Path) -> Iterator[Path]:
    """Within this context, ``${stage:<name>}`` resolves to ``root / <name>``."""
    _PIPELINES.append(root)
    try:
        yield root
    finally:
        _PIPELINES.pop()


def stage_dir(name: str) -> str:
    """Run directory of an earlier stage of the current pipeline (the ``stage`` resolver)."""
    if not _PIPELINES:
        raise ValueError(
            f"${{stage:{name}}} is only defined inside a pipeline's stages; for a single run, give the "
            "earlier run directory itself (e.g. +model.init.video=outputs/<run>)."
        )
    folder = _PIPELINES[-1] / name
    if not folder.is_dir():
        raise ValueError(
            f"${{stage:{name}}}: stage '{name}' has not run yet in {_PIPELINES[-1]}; order the stages so it comes first."
        )
    return str(folder)


def register_resolvers() -> None:
    """Register mmtrain's resolvers once (idempotent)."""
    if not OmegaConf.has_resolver("stage"):
        OmegaConf.register_new_resolver("stage", stage_dir)

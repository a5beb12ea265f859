"""``mmtrain train -m``: a Hydra-style sweep, one training run per combination, one comparison table.

Overrides with comma lists or ranges (``model/fusion=concat,gated``, ``task.optimizer.lr=1e-3,3e-3``,
``data.batch_size=range(8,33,8)``; Hydra's sweep syntax, parsed by Hydra) expand to their cartesian
product. Each combination trains in order into ``<sweep dir>/<i>-<label>/`` (``<output_root>/<name>/
<time>`` unless ``run_dir`` is given), a run that fails is recorded with its error and the others go
on, and ``sweep.json`` plus ``report.html`` in the sweep folder compare the runs' test metrics.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mmtrain.app.commands.train import make_run_dir
from mmtrain.app.report.html import write_report

log = logging.getLogger(__name__)

SWEEP_NAME = "sweep.json"


def expand(overrides: Sequence[str]) -> list[list[str]]:
    """Every combination of the sweep overrides (each a list of plain overrides, in command-line order)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices: list[list[str]] = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        if override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(combination) for combination in itertools.product(*choices)]


def label(combination: Sequence[str], swept: Sequence[str]) -> str:
    """A folder-safe name for a combination, also as a Hydra override value: its swept settings
    (``fusion-gated_lr-0.001``)."""
    parts = [o.lstrip("+~").rsplit("/", 1)[-1].split(".")[-1].replace("=", "-") for o in combination if o in swept]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "_".join(parts)) or "run"


def run_sweep(cfg: DictConfig, overrides: Sequence[str], compose: Callable[[list[str]], DictConfig],
              train: Callable[[DictConfig], dict[str, Any]]) -> dict[str, Any]:
    """Train every combination of ``overrides`` (see the module docstring); returns ``sweep.json``'s content.

    Args:
        cfg: the config of the first combination (names the sweep folder).
        overrides: the command line's overrides, sweeps included.
        compose: overrides -> composed config.
        train: runs one training job, returns its metrics.
    """
    combinations = expand(overrides)
    swept = sorted({o for c in combinations for o in c if sum(o in other for other in combinations) < len(combinations)})
    root = make_run_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"run_dir": str(root), "overrides": list(overrides), "runs": {}, "failed": []}
    for index, combination in enumerate(combinations):
        name = f"{index}-{label(combination, swept)}"
        log.info("sweep run %d/%d: %s", index + 1, len(combinations), " ".join(combination))
        try:
            metrics = train(compose([*combination, f"run_dir={root / name}"]))
            summary["runs"][name] = {"overrides": combination, **metrics}
        except Exception as err:  # noqa: BLE001 - one failed combination must not lose the others
            log.error("sweep run %s failed: %s", name, err)
            summary["runs"][name] = {"overrides": combination, "error": f"{type(err).__name__}: {err}"}
            summary["failed"].append(name)
        (Path(root) / SWEEP_NAME).write_text(json.dumps(summary, indent=2, default=str))
        write_report(root)
    return summary

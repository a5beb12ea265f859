"""Start-up benchmark: how long ``mmtrain --help``, ``mmtrain list`` and ``import mmtrain`` take, against
``python -c pass`` measured in the same run, and what ``import mmtrain`` loads.

Each command runs in a fresh process, alternately with the baseline (medians over ``--repeats``). Goal:
``mmtrain --help`` under 1.5 s wall on this machine (the ratio to ``python -c pass`` is reported too).
``python -X importtime -c "import mmtrain.app.cli"`` lists the slowest imports of the CLI module.

Run: ``.venv/bin/python benchmarks/startup.py [--repeats 7]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, when run as a script
from harness import Result, goal_row, paired_medians, print_table  # noqa: E402

HELP_GOAL_S = 1.5
PYTHON = sys.executable
MMTRAIN = str(Path(PYTHON).with_name("mmtrain"))


def execute(command: list[str]) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"})


def slowest_imports(module: str, top: int = 3) -> list[tuple[str, float]]:
    """The ``top`` imports with the largest cumulative time under ``python -X importtime``."""
    done = subprocess.run([PYTHON, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True,
                          check=True)
    rows = []
    for line in done.stderr.splitlines():
        parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
        if len(parts) == 3 and parts[1].isdigit():
            rows.append((parts[2], int(parts[1]) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:top]


def loaded_by(module: str) -> list[str]:
    """Which of torch, transformers, lightning, hydra, numpy importing ``module`` loads."""
    probe = ("import sys; import {m}; print(','.join(n for n in ('torch', 'transformers', 'lightning', 'hydra', "
             "'numpy') if n in sys.modules))").format(m=module)
    return [n for n in subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, check=True)
            .stdout.strip().split(",") if n]


def measure(repeats: int = 7) -> list[Result]:
    """Rows ``startup: ...``."""
    return _rows(repeats)


def run(quick: bool = False) -> list[Result]:
    """For run_all.py: the rows with 3 (quick) or 7 repeats."""
    return measure(3 if quick else 7)


def _rows(repeats: int) -> list[Result]:
    baseline = [PYTHON, "-c", "pass"]
    rows = []
    for name, command in (("mmtrain --help", [MMTRAIN, "--help"]), ("mmtrain list", [MMTRAIN, "list"]),
                          ("import mmtrain", [PYTHON, "-c", "import mmtrain"])):
        took, base = paired_medians(lambda c=command: execute(c), lambda: execute(baseline), repeats)
        value, reference = f"{took:.3f} s", f"{base:.3f} s (python -c pass)"
        if name == "mmtrain --help":
            rows.append(goal_row(f"startup: {name} wall time (goal: under {HELP_GOAL_S} s)", value, reference,
                                 took / HELP_GOAL_S, 1.0, at_most=True))
            rows.append(Result(f"startup: {name} vs python -c pass", value, reference, took / base))
        else:
            rows.append(Result(f"startup: {name} vs python -c pass", value, reference, took / base))
    heavy = loaded_by("mmtrain")
    rows.append(Result("startup: heavy packages `import mmtrain` loads (torch, transformers, lightning, hydra, numpy)",
                       ", ".join(heavy) or "none", "none", None, "none", not heavy))
    slow = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in slowest_imports("mmtrain.app.cli"))
    rows.append(Result(f"startup: slowest imports of mmtrain.app.cli (-X importtime): {slow}", "", "", None))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    return 0 if print_table("start-up (fresh processes, medians)", measure(args.repeats)) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""A library others install changes nothing process-wide: importing every mmtrain module and training
through the Python API (with and without the opt-in ``perf`` settings) leaves the warnings filters,
gc state, the Lightning functions ``perf.lightning_fixes`` swaps, the global RNG streams, the
environment, torch's thread count and the signal handlers as they were."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r'''
import ast, gc, importlib, os, pathlib, pkgutil, random, signal, sys, warnings

src = pathlib.Path(sys.argv[1])
third_party = set()
for path in src.rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
        third_party |= {n for n in names if not n.startswith("mmtrain")}
for name in sorted(third_party):  # what they do at their own import is not ours to judge
    try:
        importlib.import_module(name)
    except Exception:
        pass

import numpy as np
import torch
from lightning.pytorch.trainer import call
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultMetric

random.seed(1); np.random.seed(2); torch.manual_seed(3)
gc.collect()

def state():
    return {
        "warnings": list(warnings.filters), "gc_enabled": gc.isenabled(), "gc_frozen": gc.get_freeze_count(),
        "gc_threshold": gc.get_threshold(),
        "result_metric_to": _ResultMetric.to, "callback_dispatch": call._call_callback_hooks,
        "python_rng": random.getstate(), "numpy_rng": repr(np.random.get_state()),
        "torch_rng": torch.get_rng_state().tolist(), "environ": dict(os.environ),
        "threads": torch.get_num_threads(), "sigint": signal.getsignal(signal.SIGINT),
        "sigterm": signal.getsignal(signal.SIGTERM), "excepthook": sys.excepthook,
    }

def compare(before, after, when):
    changed = sorted(k for k in before if before[k] != after[k])
    assert not changed, f"{when} changed {changed}: " + "; ".join(
        f"{k}: {before[k]!r:.200} -> {after[k]!r:.200}" for k in changed)

before = state()
import mmtrain
for module in pkgutil.walk_packages(mmtrain.__path__, "mmtrain."):
    if not module.name.endswith("__main__"):
        importlib.import_module(module.name)
compare(before, state(), "importing every mmtrain module")

run = ["data=synthetic", "data.train.num_samples=16", "data.val.num_samples=8", "data.test.num_samples=8",
       "data.batch_size=8", "data.num_workers=1", "trainer.max_epochs=1", "callbacks.progress=null",
       "logger.tensorboard=null", "evaluate_unimodal=false"]
plain = mmtrain.train([*run, "run_dir=" + sys.argv[2] + "/plain"])
assert plain.metrics["test"]["acc"] >= 0 and (plain.run_dir / "metrics.json").is_file()
compare(before, state(), "mmtrain.train")
tuned = mmtrain.train([*run, "run_dir=" + sys.argv[2] + "/perf"], perf=True)
assert tuned.metrics["test"]["acc"] == plain.metrics["test"]["acc"]
compare(before, state(), "mmtrain.train(perf=True)")
print("unchanged")
'''

LIGHT = r'''
import contextlib, io, sys
import mmtrain
HEAVY = ("torch", "transformers", "lightning", "numpy", "hydra")
heavy = sorted(m for m in HEAVY if m in sys.modules)
assert not heavy, f"import mmtrain loaded {heavy}"
from mmtrain.app.cli import main
for argv in (["--help"], ["train", "--help"], ["--version"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(argv)
    assert out.getvalue(), argv
assert out.getvalue().strip() == f"mmtrain {mmtrain.__version__}"
main(["list"])
heavy = sorted(m for m in ("torch", "transformers", "lightning") if m in sys.modules)
assert not heavy, f"mmtrain --help / list loaded {heavy}"
print("light")
'''


@pytest.mark.slow  # two tiny training runs in a fresh interpreter (~40 s)
def test_importing_and_training_through_the_api_changes_nothing_process_wide(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[2] / "src" / "mmtrain"
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(src), str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().endswith("unchanged")


def test_import_mmtrain_help_version_and_list_load_no_torch_transformers_or_lightning() -> None:
    done = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]

"""GPU check, second part: Lightning's sharded engines through mmtrain on one CUDA card (world size 1 proves the
code paths: sharding, checkpoint folders, resume, consolidation), each as a user runs it from the command line.

Per preset (``trainer=fsdp`` (v1), ``fsdp2``, ``fsdp2_sharded``, ``deepspeed_zero2``, ``deepspeed_zero3``): the demo
at its tiny size trained on the GPU, killed (-9) after step 5 by the KillSwitch, then ``resume=``; the row says
where it resumed from, whether its checkpoints are files or folders (all listed in the manifest), the test
accuracy, that the export loads with ``AutoModel``, and the wall time of both runs. About 3-4 minutes on an H100
(process start-up dominates). ``gpu_check.py`` runs it after the LLM settings (``--part strategies`` alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Result, console

PRESETS = ("fsdp", "fsdp2", "fsdp2_sharded", "deepspeed_zero2", "deepspeed_zero3")
DEMO = ["experiment=demo", "data.prepare.size=tiny", "data.num_workers=0", "trainer.accelerator=gpu", "trainer.devices=1",
        "trainer.max_epochs=2", "data.batch_size=4", "callbacks.resume_checkpoint.every_n_train_steps=3",
        "evaluate_unimodal=false", "callbacks.progress=null"]
KILL_AT = 5


def _train(*overrides: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "mmtrain.app.cli", "train", *DEMO, *overrides], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def check(preset: str, workspace: Path, card: str) -> Result:
    """Train with ``preset``, kill at step :data:`KILL_AT`, resume, load the export: one row."""
    from mmtrain.engine.callbacks.faults import final_checkpoint, kill_overrides

    run_dir = workspace / preset
    started = time.perf_counter()
    killed = _train(f"trainer={preset}", f"run_dir={run_dir}", *kill_overrides(KILL_AT), cwd=workspace)
    resumed = _train(f"trainer={preset}", f"resume={run_dir}", cwd=workspace) if killed.returncode == -9 else killed
    seconds = time.perf_counter() - started
    name = f"trainer={preset} [{card}]: kill -9 at step {KILL_AT}, resume=, export"
    if killed.returncode != -9 or resumed.returncode != 0:
        tail = (resumed.stderr or resumed.stdout)[-300:].replace("\n", " ")
        console.print(f"  {preset}: FAILED (codes {killed.returncode}, {resumed.returncode}): {tail}")
        return Result(name, f"FAILED: {tail[-120:]}", f"{seconds:.0f} s", None)
    from transformers import AutoModel

    import mmtrain.models  # noqa: F401  (registers the model types with AutoModel)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    AutoModel.from_pretrained(run_dir / "export")
    kind = "folders" if final_checkpoint(run_dir).is_dir() else "files"
    value = f"resumed from {metrics.get('resumed_from')}, {kind}, test acc {metrics['test']['acc']:.3f}, export loads"
    console.print(f"  {preset}: {value} ({seconds:.0f} s)")
    return Result(name, value, f"{seconds:.0f} s both runs", None)


def run(card: str) -> list[Result]:
    """One row per preset (DeepSpeed's only when it is installed)."""
    import importlib.util

    workspace = Path(tempfile.mkdtemp(prefix="mmtrain-gpu-strategies-"))
    rows = []
    for preset in PRESETS:
        if preset.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
            rows.append(Result(f"trainer={preset} [{card}]", "deepspeed not installed", "", None))
            continue
        rows.append(check(preset, workspace, card))
    return rows

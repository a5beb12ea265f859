"""``GradientAudit`` under a real Lightning Trainer: CSV/JSON/PNG, frozen and never-changed
parameters, dead/saturated activations, non-finite gradients, AMP scale, resume and DDP.

Tiny two-encoder model (``encoders.a``: Linear+ReLU trainable, ``encoders.b``: Linear+Tanh frozen,
``head``: Linear) on 32 random samples, batch 8: 4 optimizer steps per epoch.
"""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmtrain.engine.callbacks.audit import GradientAudit, group_of

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    def __init__(self, *, dead: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoders = nn.ModuleDict({
            "a": nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
            "b": nn.Sequential(nn.Linear(4, 8), nn.Tanh()),
        })
        self.head = nn.Linear(16, 2)
        self.encoders["b"].requires_grad_(False)
        if dead:  # every pre-activation of encoders.a is about -100: ReLU outputs exactly 0
            nn.init.zeros_(self.encoders["a"][0].weight)
            nn.init.constant_(self.encoders["a"][0].bias, -100.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x * 20 drives the frozen tanh into saturation.
        return self.head(torch.cat([self.encoders["a"](x), self.encoders["b"](20 * x)], dim=-1))


class Task(pl.LightningModule):
    def __init__(self, **net: Any) -> None:
        super().__init__()
        self.model = Net(**net)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


class AtStep(pl.Callback):
    """Runs ``action(pl_module)`` once, in hook ``hook``, when ``trainer.global_step == step``."""

    def __init__(self, hook: str, step: int, action: Any) -> None:
        self.step, self.action, self.done = step, action, False

        def run(trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
            if trainer.global_step == self.step and not self.done:
                self.done = True
                with torch.no_grad():
                    self.action(pl_module)

        setattr(self, hook, run)


def loader() -> DataLoader:
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(32, 4, generator=gen), torch.randint(0, 2, (32,), generator=gen))
    return DataLoader(data, batch_size=8)


def fit(task: Task, callbacks: list[pl.Callback], ckpt_path: str | None = None, **trainer: Any) -> pl.Trainer:
    options = {"max_epochs": 2, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False, **trainer}
    run = pl.Trainer(callbacks=callbacks, **options)
    run.fit(task, loader(), ckpt_path=ckpt_path)
    return run


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "grad_audit.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "grad_audit.json").read_text())


def test_norms_per_module_frozen_encoder_untouched_and_a_png(tmp_path: Path) -> None:
    fit(Task(), [GradientAudit(run_dir=str(tmp_path), every_n_steps=3)])  # 8 steps: 0, 3, 6 audited
    table = rows(tmp_path)
    assert [(r["step"], r["module"]) for r in table] == [
        (s, m) for s in ("0", "3", "6") for m in ("encoders.a", "encoders.b", "head")]
    assert {r["epoch"] for r in table if r["step"] == "6"} == {"1"}
    for row in table:
        assert float(row["param_norm"]) > 0 and float(row["rss_mb"]) > 50
        assert row["amp_scale"] == "" and row["cuda_max_mb"] == "" and row["nonfinite"] == "0"
        if row["module"] == "encoders.b":  # frozen: no gradient, no update, weights constant
            assert row["grad_norm"] == row["update_ratio"] == ""
            assert float(row["saturated_fraction"]) > 0.5  # tanh(20x) sits at +-1
        else:
            assert 0 < float(row["grad_norm"]) < 100 and 0 < float(row["update_ratio"]) < 1
    assert len({r["param_norm"] for r in table if r["module"] == "encoders.b"}) == 1
    assert 0.2 < float(table[0]["dead_fraction"]) < 0.8  # a live ReLU: about half its outputs are 0

    report = summary(tmp_path)
    assert report["steps_audited"] == 3 and list(report["modules"]) == ["encoders.a", "encoders.b", "head"]
    assert report["frozen_unchanged"] is True and report["frozen_changed"] == []
    assert report["frozen_parameters"] == 2 and report["trainable_parameters"] == 4
    assert report["trainable_never_changed"] == [] and report["nonfinite_grad_modules"] == []
    assert report["dead_activations"] == []
    assert [a["layer"] for a in report["saturated_activations"]] == ["model.encoders.b.1"]
    assert report["modules"]["encoders.b"]["frozen"] and report["modules"]["head"]["grad_norm_max"] > 0
    assert report["peak_rss_mb"] >= max(float(r["rss_mb"]) for r in table)

    with Image.open(tmp_path / "grad_flow.png") as image:
        assert image.format == "PNG" and image.size[0] == 1300 and image.size[1] >= 300


def test_groups_by_depth_without_containers_or_the_task_wrapper() -> None:
    task = Task()
    assert group_of(task, "model.encoders.a.0", depth=1) == "encoders.a"
    assert group_of(task, "model.encoders.a.0", depth=2) == "encoders.a.0"
    assert group_of(task, "model.head", depth=3) == "head"
    assert group_of(task, "", depth=1) == "(root)"


def test_a_changed_frozen_parameter_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    corrupt = AtStep("on_train_batch_end", 5, lambda m: m.model.encoders["b"][0].weight.add_(1e-6))
    with caplog.at_level(logging.WARNING, logger="mmtrain.engine.callbacks.audit"):
        fit(Task(), [GradientAudit(run_dir=str(tmp_path), every_n_steps=4), corrupt])
    report = summary(tmp_path)
    assert report["frozen_unchanged"] is False
    assert report["frozen_changed"] == ["model.encoders.b.0.weight"]  # the bias was left alone
    assert report["frozen_changed_modules"] == ["encoders.b"]
    warning = next(r.getMessage() for r in caplog.records if "frozen" in r.getMessage())
    assert "CHANGED" in warning and "encoders.b" in warning and "model.encoders.b.0.weight" in warning


def test_dead_relu_is_reported_and_its_linear_never_changes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mmtrain.engine.callbacks.audit"):
        fit(Task(dead=True), [GradientAudit(run_dir=str(tmp_path), every_n_steps=2)])
    report = summary(tmp_path)
    assert report["dead_activations"] == [
        {"layer": "model.encoders.a.1", "module": "encoders.a", "type": "ReLU", "fraction": 1.0}]
    assert report["trainable_never_changed"] == ["model.encoders.a.0.weight", "model.encoders.a.0.bias"]
    assert report["trainable_never_changed_modules"] == ["encoders.a"]
    assert report["no_gradient_modules"] == ["encoders.a"]  # a zero norm at every audited step
    assert {r["dead_fraction"] for r in rows(tmp_path) if r["module"] == "encoders.a"} == {"1"}
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "NEVER changed" in messages and "dead activations over 90% in model.encoders.a.1" in messages


def test_nonfinite_gradients_are_counted_per_module(tmp_path: Path) -> None:
    poison = AtStep("on_after_backward", 2, lambda m: m.model.head.weight.grad.__setitem__((0, 0), float("inf")))
    fit(Task(), [GradientAudit(run_dir=str(tmp_path), every_n_steps=1), poison], max_steps=3)
    counts = {(r["step"], r["module"]): r["nonfinite"] for r in rows(tmp_path)}
    assert counts[("2", "head")] == "1" and counts[("2", "encoders.a")] == "0" and counts[("1", "head")] == "0"
    assert summary(tmp_path)["nonfinite_grad_modules"] == ["head"]


def test_amp_grad_scale_is_recorded_and_norms_are_unscaled(tmp_path: Path) -> None:
    precision = MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=1024.0))
    fit(Task(), [GradientAudit(run_dir=str(tmp_path), every_n_steps=4)], plugins=[precision], max_steps=4)
    head = [r for r in rows(tmp_path) if r["module"] == "head"]
    assert [r["amp_scale"] for r in head] == ["1024"]
    assert float(head[0]["grad_norm"]) < 10  # unscaled before the hook; scaled it would be ~1000x
    assert summary(tmp_path)["last_amp_scale"] == 1024.0


def test_auditing_every_step_leaves_training_unchanged(tmp_path: Path) -> None:
    plain, audited = Task(), Task()
    fit(plain, [])
    fit(audited, [GradientAudit(run_dir=str(tmp_path), every_n_steps=1)])
    for (name, a), (_, b) in zip(plain.named_parameters(), audited.named_parameters()):
        assert torch.equal(a, b), name
    assert not any(m._forward_hooks for m in audited.modules()), "activation hooks must be removed"


def test_resume_keeps_the_first_start_fingerprints_and_drops_rows_past_the_checkpoint(tmp_path: Path) -> None:
    """The first run is 'killed' at step 6 after a checkpoint at step 4; the resumed run ends at 8."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, filename="{step}")
    corrupt = AtStep("on_train_batch_end", 1, lambda m: m.model.encoders["b"][0].bias.mul_(2))  # before step 4
    fit(Task(), [GradientAudit(run_dir=str(tmp_path), every_n_steps=1), ckpt, corrupt],
        enable_checkpointing=True, max_steps=6)
    assert sorted({int(r["step"]) for r in rows(tmp_path)}) == [0, 1, 2, 3, 4, 5]

    again = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, filename="{step}")
    fit(Task(), [GradientAudit(run_dir=str(tmp_path), every_n_steps=1), again],
        ckpt_path=str(tmp_path / "ckpt" / "step=4.ckpt"), enable_checkpointing=True, max_steps=8)
    steps = [int(r["step"]) for r in rows(tmp_path) if r["module"] == "head"]
    assert steps == list(range(8)), "rows of steps 4 and 5 from the killed run are replaced, not doubled"
    report = summary(tmp_path)
    assert report["steps_audited"] == 8
    # The resumed run starts from weights where the bias already differs; only the checkpointed
    # fingerprints from the first start can tell.
    assert report["frozen_changed"] == ["model.encoders.b.0.bias"]


DDP_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import lightning.pytorch as pl
import torch
from test_audit import Task, loader
from mmtrain.engine.callbacks.audit import GradientAudit

torch.set_num_threads(1)
out = Path(sys.argv[1])
audit = GradientAudit(run_dir=str(out), every_n_steps=1)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False, callbacks=[audit],
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
trainer.fit(Task(), loader())
(out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"groups": len(audit._groups), "steps": trainer.global_step}))
"""


@pytest.mark.slow
def test_ddp_two_processes_only_rank_zero_audits_and_writes(tmp_path: Path) -> None:
    script = tmp_path / "ddp_audit.py"
    script.write_text(DDP_SCRIPT)
    subprocess.run([sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)], check=True,
                   cwd=tmp_path, timeout=300, capture_output=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["groups"] for r in ranks] == [3, 0] and ranks[0]["steps"] == 2  # 32 samples / (2 ranks x 8)
    keys = [(r["step"], r["module"]) for r in rows(tmp_path)]
    assert len(keys) == len(set(keys)) == 2 * 3, "one row per step and module: rank 1 wrote none"
    assert summary(tmp_path)["frozen_unchanged"] is True


@pytest.mark.slow
def test_full_run_with_a_frozen_video_encoder(tmp_path: Path) -> None:
    from mmtrain.config.compose import compose_config
    from mmtrain.app.commands.train import train

    run_dir = tmp_path / "run"
    train(compose_config([
        "data=synthetic", "data.train.num_samples=32", "data.val.num_samples=8", "data.test.num_samples=8",
        "data.batch_size=8", "~model/encoders/text", "+model.trainable.video=false", "trainer.max_epochs=1",
        "trainer.log_every_n_steps=1", "callbacks.progress=null", "callbacks.grad_audit.every_n_steps=2", "evaluate_unimodal=false",
        f"run_dir={run_dir}",
    ]))
    table = rows(run_dir)
    assert sorted({int(r["step"]) for r in table}) == [0, 2]
    trained = [r for r in table if r["module"] in ("encoders.audio", "fusion", "head")]
    assert len(trained) == 2 * 3 and all(0 < float(r["grad_norm"]) < float("inf") for r in trained)
    assert all(r["grad_norm"] == "" for r in table if r["module"] == "encoders.video")
    report = summary(run_dir)
    assert report["frozen_unchanged"] is True and report["frozen_changed"] == []
    assert report["frozen_parameters"] > 0 and report["trainable_never_changed"] == []
    assert report["modules"]["encoders.video"]["frozen"] is True
    with Image.open(run_dir / "grad_flow.png") as image:
        assert image.format == "PNG"

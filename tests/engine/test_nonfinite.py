"""NaN/Inf policy (``task.nonfinite``): abort names the step and samples with no update; skip leaves
weights AND optimizer state unchanged, counts and logs the step; clipping, accumulation and the LR
schedule still work; under torch.distributed every rank takes the same decision.

Real Lightning Trainer on a tiny linear task whose in-memory data hold one poisoned sample.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from mmtrain.config.compose import compose_config, group_options
from mmtrain.engine.tasks.base import TaskBase
from mmtrain.engine.tasks.schedules import cosine_with_warmup
from mmtrain.engine import nonfinite
from mmtrain.engine.nonfinite import NonFiniteLossError

pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")

IDS = [f"s{i}" for i in range(8)]  # batch_size 2: batches [s0 s1] [s2 s3] [s4 s5] [s6 s7]


class TinyTask(TaskBase):
    """Least squares on a linear layer; ``grad_poison``: the id whose batch gets an inf gradient
    (the loss stays finite)."""

    def __init__(self, grad_poison: str | None = None, rows: bool = False, **kwargs: Any) -> None:
        torch.manual_seed(0)
        super().__init__(model=nn.Linear(3, 1), **kwargs)
        self.grad_poison = grad_poison
        self.rows = rows  # report per-sample outputs, as the classification and pairwise tasks do

    def step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        pred = self.model(batch["x"]).squeeze(-1)
        if self.rows:
            self.sample_rows = pred
        if self.grad_poison in batch["ids"]:
            pred.register_hook(lambda g: g * float("inf"))
        loss = ((pred - batch["y"]) ** 2).mean()
        self.log(f"{split}/loss", loss, batch_size=len(batch["ids"]))
        return loss


def loader(nan_id: str | None = None) -> DataLoader:
    """8 samples in order; ``nan_id`` has a NaN feature (so its batch's loss and grads are NaN)."""
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, generator=gen), torch.randn(8, generator=gen)
    if nan_id is not None:
        x[IDS.index(nan_id), 1] = float("nan")
    samples = [{"id": i, "x": x[k], "y": y[k]} for k, i in enumerate(IDS)]

    def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"ids": [s["id"] for s in items], "x": torch.stack([s["x"] for s in items]),
                "y": torch.stack([s["y"] for s in items])}

    return DataLoader(samples, batch_size=2, shuffle=False, collate_fn=collate)


def state(trainer: pl.Trainer, task: TaskBase) -> dict[str, Any]:
    return {"weights": {n: p.detach().clone() for n, p in task.named_parameters()},
            "optim": copy.deepcopy(trainer.optimizers[0].state_dict()["state"]) if trainer.optimizers else {}}


def same(a: Any, b: Any) -> bool:
    """Bit-identical nested dicts of tensors."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


class Snapshots(pl.Callback):
    """Weights and optimizer state before and after every training batch."""

    def __init__(self) -> None:
        self.before: dict[int, dict[str, Any]] = {}
        self.after: dict[int, dict[str, Any]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.before[batch_idx] = state(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.after[batch_idx] = state(trainer, pl_module)


def fit(task: TaskBase, data: DataLoader, **trainer_kwargs: Any) -> tuple[pl.Trainer, Snapshots]:
    snaps = Snapshots()
    options = {"accelerator": "cpu", "devices": 1, "max_epochs": 1, "gradient_clip_val": 1.0, "logger": False,
               "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
               "num_sanity_val_steps": 0, **trainer_kwargs}
    trainer = pl.Trainer(callbacks=[snaps], **options)
    trainer.fit(task, train_dataloaders=data)
    return trainer, snaps


ADAM = functools.partial(torch.optim.Adam, lr=0.05)


def test_unknown_policy_is_refused_naming_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match=r"task.nonfinite must be one of \['abort', 'skip'\], got 'ignore'"):
        TinyTask(optimizer=ADAM, nonfinite="ignore")


@pytest.mark.parametrize("option", group_options("task"))
def test_every_shipped_task_config_defaults_to_abort(option: str) -> None:
    assert compose_config([f"task={option}"]).task.nonfinite == "abort"


def test_abort_names_step_and_ids_and_applies_no_update(one_thread: None) -> None:
    task = TinyTask(optimizer=ADAM)
    snaps = Snapshots()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, gradient_clip_val=1.0, logger=False, callbacks=[snaps],
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(task, train_dataloaders=loader(nan_id="s5"))
    message = str(err.value)
    assert isinstance(err.value, ValueError)  # cli.USER_ERRORS: printed without traceback, exit 2
    assert "optimizer step 2 (epoch 0, batch 2)" in message
    assert "NaN/Inf in the loss (nan) and the gradients of param group 0 (model.weight" in message
    assert "['s4', 's5']" in message and "task.nonfinite=skip" in message
    assert 2 not in snaps.after  # stopped at that batch
    assert same(state(trainer, task), snaps.before[2])  # weights and Adam state as after step 1
    assert int(trainer.optimizers[0].state_dict()["state"][0]["step"]) == 2


def test_per_sample_outputs_name_the_offending_sample_not_its_batch(one_thread: None) -> None:
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(TinyTask(optimizer=ADAM, rows=True), train_dataloaders=loader(nan_id="s5"))
    assert "sample ids whose outputs are NaN/Inf: ['s5']" in str(err.value)


def test_skip_leaves_weights_and_adam_state_unchanged_and_counts_the_step(
    one_thread: None, caplog: pytest.LogCaptureFixture
) -> None:
    task = TinyTask(optimizer=ADAM, scheduler=functools.partial(cosine_with_warmup, warmup_ratio=0.0),
                    nonfinite="skip")
    with caplog.at_level(logging.WARNING, logger="mmtrain.engine.nonfinite"):
        trainer, snaps = fit(task, loader(nan_id="s5"))
    assert same(snaps.after[2], snaps.before[2])  # weights, exp_avg, exp_avg_sq and step all untouched
    assert int(snaps.after[2]["optim"][0]["step"]) == 2
    for good in (0, 1, 3):
        assert not same(snaps.after[good]["weights"], snaps.before[good]["weights"])
    assert all(torch.isfinite(p).all() for p in task.parameters())
    assert int(trainer.optimizers[0].state_dict()["state"][0]["step"]) == 3  # 3 updates applied
    # the skipped step is counted: global_step and the LR schedule advance over it
    assert trainer.global_step == 4
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4
    assert task.nonfinite_skips == [
        {"step": 2, "epoch": 0, "batch_idx": 2, "reason": "loss and gradients", "ids": ["s4", "s5"]}
    ]
    assert float(trainer.callback_metrics["train/nonfinite_skipped"]) == 1.0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "optimizer step 2" in warned[0] and "'s5'" in warned[0]
    checkpoint: dict[str, Any] = {}
    task.on_save_checkpoint(checkpoint)
    restored = TinyTask(optimizer=ADAM, nonfinite="skip")
    restored.on_load_checkpoint(checkpoint)
    assert restored.nonfinite_skips == task.nonfinite_skips


def test_finite_loss_with_inf_gradient_is_caught_before_clipping(one_thread: None) -> None:
    """Clipping an inf gradient would turn every gradient into NaN; the check runs before it."""
    task = TinyTask(optimizer=ADAM, grad_poison="s3")
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, gradient_clip_val=1.0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(task, train_dataloaders=loader())
    message = str(err.value)
    assert "optimizer step 1 (epoch 0, batch 1)" in message
    assert "the loss" not in message
    assert "NaN/Inf in the gradients of param group 0 (model.weight, model.bias)" in message
    assert "sample ids of the step's batch(es): ['s2', 's3']" in message
    assert all(torch.isfinite(p).all() for p in task.parameters())
    assert not same({n: p.detach() for n, p in task.named_parameters()}, before)  # step 0 was applied


def test_accumulation_window_is_skipped_whole_and_blames_the_bad_micro_batch(one_thread: None) -> None:
    task = TinyTask(optimizer=ADAM, nonfinite="skip")
    trainer, snaps = fit(task, loader(nan_id="s4"), accumulate_grad_batches=2)
    assert same(snaps.after[3], snaps.before[2])  # the window [s4 s5] [s6 s7] applied nothing
    assert not same(snaps.after[1]["weights"], snaps.before[0]["weights"])
    assert trainer.global_step == 2
    assert task.nonfinite_skips == [
        {"step": 1, "epoch": 0, "batch_idx": 3, "reason": "loss and gradients", "ids": ["s4", "s5"]}
    ]


def test_clean_steps_are_still_clipped(one_thread: None) -> None:
    """SGD with lr 1 moves the weights by exactly the clipped gradient: at most gradient_clip_val."""
    task = TinyTask(optimizer=functools.partial(torch.optim.SGD, lr=1.0), nonfinite="skip")
    trainer, snaps = fit(task, loader(), gradient_clip_val=1e-3)
    for batch_idx in range(4):
        delta = torch.cat([(snaps.after[batch_idx]["weights"][n] - w).flatten()
                           for n, w in snaps.before[batch_idx]["weights"].items()])
        assert 0 < float(delta.norm()) <= 1e-3 * (1 + 1e-5)
    assert trainer.global_step == 4 and task.nonfinite_skips == []
    assert float(trainer.callback_metrics["train/nonfinite_skipped"]) == 0.0


# Run with ``python -c`` per rank. It loads nonfinite.py by path: importing the mmtrain package pulls
# in transformers (~5 s per process), and the guard itself only needs torch.
TESTS_DIR = str(Path(__file__).resolve().parents[1])  # where _dist.py lives
RANK_WORKER = """
import importlib.util, json, sys
from pathlib import Path
import torch
import torch.distributed as dist
from torch import nn

source, init_file, out_dir, rank, tests_dir = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, tests_dir)
from _dist import end_rank
spec = importlib.util.spec_from_file_location("nonfinite_under_test", source)
nf = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = nf
spec.loader.exec_module(nf)
torch.set_num_threads(1)
torch.manual_seed(0)
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=2)
model = nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
guard = nf.NonFiniteGuard("skip")
stepped, unchanged = [], []
for step, bad_rank in enumerate((None, 1)):  # only rank 1 sees a NaN loss, at step 1; grads stay finite
    def closure():
        loss = model(torch.ones(1, 2)).sum()
        loss.backward()
        loss = loss.detach() * (float("nan") if rank == bad_rank else 1.0)
        guard.record(["r%d-b%d" % (rank, step)], loss)
        return loss
    optimizer.zero_grad()
    before = [p.detach().clone() for p in model.parameters()]
    stepped.append(guard.step(optimizer, closure, nf.StepPlace(step, 0, step), names=dict, announce=False))
    unchanged.append(all(torch.equal(p, b) for p, b in zip(model.parameters(), before)))
Path(out_dir, "rank%d.json" % rank).write_text(json.dumps(
    {"stepped": stepped, "unchanged": unchanged, "skips": guard.skips}))
end_rank()
"""


def test_distributed_ranks_take_the_same_decision(tmp_path: Path) -> None:
    """Two gloo processes: rank 0 sees nothing wrong, yet skips too and knows rank 1's ids."""
    args = [nonfinite.__file__, str(tmp_path / "pg"), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ranks = [subprocess.Popen([sys.executable, "-c", RANK_WORKER, *args, str(r), TESTS_DIR], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outputs = [proc.communicate(timeout=120)[0] for proc in ranks]
    assert [proc.returncode for proc in ranks] == [0, 0], outputs
    for rank in range(2):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert result["stepped"] == [True, False]
        assert result["unchanged"] == [False, True]
        assert result["skips"] == [{"step": 1, "epoch": 0, "batch_idx": 1, "reason": "loss", "ids": ["r1-b1"]}]


def test_the_fast_check_neither_misses_nan_nor_flags_huge_finite_values() -> None:
    """The check's quick path (total gradient norm plus losses) is exact whenever it says finite; a
    huge finite gradient or loss that overflows it is looked at value by value and passes."""
    from mmtrain.engine.nonfinite import NonFiniteGuard

    params = [nn.Parameter(torch.zeros(50)) for _ in range(4)] + [nn.Parameter(torch.zeros(0))]
    optimizer = torch.optim.SGD(params, lr=0.1)

    def check(grads: list[torch.Tensor], loss: float) -> Any:
        guard = NonFiniteGuard("skip")
        for param, grad in zip(params, grads):
            param.grad = grad.clone()
        guard.record(["a"], torch.tensor(loss))
        return guard.check(optimizer, names=lambda: {id(p): f"p{i}" for i, p in enumerate(params)})

    grads = [torch.randn(50) for _ in range(4)] + [torch.zeros(0)]
    assert check(grads, 1.0) is None
    grads[1][7] = 3.0e38  # its L2 norm overflows to inf, yet every value is finite
    assert check(grads, 1.0) is None
    assert check(grads, 3.0e38) is None  # norm + loss overflow too
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = [g.clone() for g in grads]
        broken[3][0] = bad
        finding = check(broken, 1.0)
        assert finding is not None and finding.grads == {0: ["p3"]} and not finding.loss_ids
        finding = check(grads, bad)
        assert finding is not None and finding.loss_ids == ["a"] and not finding.grads


def test_sparse_gradients_are_checked_value_by_value() -> None:
    from mmtrain.engine.nonfinite import NonFiniteGuard

    embedding = nn.Embedding(10, 4, sparse=True)
    optimizer = torch.optim.SGD(embedding.parameters(), lr=0.1)
    guard = NonFiniteGuard("skip")
    for bad, expected in ((None, None), (float("inf"), {0: ["weight"]})):
        embedding.zero_grad(set_to_none=True)
        out = embedding(torch.tensor([1, 3]))
        (out.sum() * (bad if bad is not None else 1.0)).backward()
        assert embedding.weight.grad is not None and embedding.weight.grad.is_sparse
        guard.record(["a"], torch.tensor(1.0))
        finding = guard.check(optimizer, names=lambda: {id(embedding.weight): "weight"})
        assert (finding.grads if finding is not None else None) == expected
        assert guard.total_grad_norm(optimizer) is None  # no shared norm for sparse gradients: Lightning clips
        guard.reset()


class ScaleGrads(pl.Callback):
    """Rescales every gradient in place just before clipping (as a user hook might)."""

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        for p in pl_module.parameters():
            if p.grad is not None:
                p.grad.mul_(3.0)


@pytest.mark.parametrize("clip", [0.05, 1e6], ids=["clip-bites", "norm-within-limit"])
@pytest.mark.parametrize("rescale", [False, True], ids=["plain", "hook-rescales-grads"])
def test_clipping_reuses_the_guards_norm_with_bit_identical_results(
    rescale: bool, clip: float, one_thread: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Clip by norm with the guard's total norm == Lightning's own clip_grad_norm_, bit for bit; a hook
    that changes the gradients after the guard looked at them makes the task fall back to Lightning.
    Within the limit the shared path multiplies nothing (the coefficient is exactly 1)."""
    multiplied: list[int] = []
    original_clip = torch.nn.utils.clip_grads_with_norm_

    def counting_clip(*args: Any, **kwargs: Any) -> None:
        multiplied.append(1)
        original_clip(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", counting_clip)

    class LightningClip(TinyTask):
        configure_gradient_clipping = pl.LightningModule.configure_gradient_clipping

    runs = {}
    for name, cls in (("shared", TinyTask), ("lightning", LightningClip)):
        multiplied.clear()
        task = cls(optimizer=ADAM)
        reused: list[bool] = []
        original = task.nonfinite_guard.total_grad_norm

        def spy(optimizer: Any, original: Any = original, reused: list[bool] = reused) -> Any:
            total = original(optimizer)
            reused.append(total is not None)
            return total

        task.nonfinite_guard.total_grad_norm = spy  # type: ignore[method-assign]
        extra = [ScaleGrads()] if rescale else []
        _, snaps = fit_with(task, extra, clip)
        runs[name] = (snaps, reused)
        if name == "shared" and not rescale:
            assert len(multiplied) == (4 if clip < 1 else 0)
    shared, lightning = runs["shared"], runs["lightning"]
    assert shared[1] == [not rescale] * 4  # the shared norm was used on every step, or never after a rescale
    assert lightning[1] == []  # Lightning's own clipping never asks
    for batch in range(4):
        assert same(shared[0].after[batch], lightning[0].after[batch])
    moved = shared[0].after[3]["weights"]["model.weight"] - shared[0].before[0]["weights"]["model.weight"]
    assert float(moved.abs().max()) > 0  # it trained


def fit_with(task: TaskBase, callbacks: list[pl.Callback], clip: float = 0.05) -> tuple[pl.Trainer, Snapshots]:
    """``fit`` with clipping by norm at ``clip`` (0.05 bites on every step) and extra callbacks."""
    snaps = Snapshots()
    trainer = pl.Trainer(callbacks=[snaps, *callbacks], accelerator="cpu", devices=1, max_epochs=1,
                         gradient_clip_val=clip, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(task, train_dataloaders=loader())
    return trainer, snaps

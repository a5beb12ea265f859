"""Separate optimizer settings per model part (``task.param_groups``)."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from mmtrain.engine.tasks.classification import ClassificationTask


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({"image": nn.Linear(4, 4), "text": nn.Linear(4, 4)})
        self.head = nn.Linear(8, 3)


def task(groups: dict | None, frozen: str | None = None) -> ClassificationTask:
    model = Tiny()
    if frozen:
        model.get_submodule(frozen).requires_grad_(False)
    return ClassificationTask(model=model, optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                              label_names=["a", "b", "c"], param_groups=groups)


def test_each_parameter_joins_the_longest_matching_group() -> None:
    optimizer = task({"head": {"lr": 5e-2}, "encoders": {"lr": 1e-4}, "encoders.text": {"lr": 2e-4}}).configure_optimizers()
    counts = {g["lr"]: len(g["params"]) for g in optimizer.param_groups}
    assert counts == {5e-2: 2, 1e-4: 2, 2e-4: 2}  # weight + bias of head, encoders.image, encoders.text


def test_parameters_outside_every_group_keep_the_optimizer_settings() -> None:
    optimizer = task({"head": {"lr": 5e-2}}).configure_optimizers()
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 5e-2]
    assert [len(g["params"]) for g in optimizer.param_groups] == [4, 2]


def test_a_group_matching_nothing_trainable_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"\['encoders.video'\].*match no trainable"):
        task({"encoders.video": {"lr": 1e-4}}).configure_optimizers()
    with pytest.raises(ValueError, match=r"\['head'\]"):
        task({"head": {"lr": 1e-4}}, frozen="head").configure_optimizers()


def test_group_learning_rates_drive_the_updates() -> None:
    """With lr 0 for the encoders, one step changes only the head."""
    t = task({"encoders": {"lr": 0.0}})
    optimizer = t.configure_optimizers()
    before = {n: p.detach().clone() for n, p in t.model.named_parameters()}
    x = torch.randn(5, 4)
    feats = torch.cat([t.model.encoders["image"](x), t.model.encoders["text"](x)], dim=-1)
    nn.functional.cross_entropy(t.model.head(feats), torch.tensor([0, 1, 2, 0, 1])).backward()
    optimizer.step()
    changed = {n for n, p in t.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"head.weight", "head.bias"}

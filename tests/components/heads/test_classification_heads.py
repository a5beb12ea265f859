"""Classification heads built from the shipped YAML."""

from __future__ import annotations

import inspect
from importlib import resources
from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

from mmtrain.components.encoders.base import EncoderOutput, full_mask
from mmtrain.components.heads.classification import LinearClassifier, MLPClassifier

HEAD_DIR = Path(str(resources.files("mmtrain.configs") / "model" / "head"))
HEADS = ["linear", "mlp"]
#: Head YAMLs of other model kinds, tested with their kind (name -> test module).
OTHER_HEADS = {"pair_compare": "tests/models/test_pairwise_model.py",
               "regression": "tests/engine/tasks/test_regression_task.py"}


def build_head(name: str, input_dim: int = 32, num_labels: int = 5, **overrides):
    cfg = OmegaConf.load(HEAD_DIR / f"{name}.yaml")
    return hydra.utils.instantiate(cfg, input_dim=input_dim, num_labels=num_labels, **overrides)


def fused(batch: int, dim: int = 32) -> EncoderOutput:
    tokens = torch.randn(batch, 4, dim)
    return EncoderOutput(tokens=tokens, mask=full_mask(tokens), pooled=torch.randn(batch, dim))


def test_every_head_yaml_is_tested_and_binds_to_its_signature() -> None:
    assert sorted(p.stem for p in HEAD_DIR.glob("*.yaml")) == sorted([*HEADS, *OTHER_HEADS])
    for name in [*HEADS, *OTHER_HEADS]:
        cfg = OmegaConf.to_container(OmegaConf.load(HEAD_DIR / f"{name}.yaml"))
        params = inspect.signature(hydra.utils.get_class(cfg.pop("_target_")).__init__).parameters
        assert not {"input_dim", "num_labels"} & set(cfg), f"{name}.yaml sets an injected argument"
        assert set(cfg) <= set(params)


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize("batch", [1, 3])
def test_logits_shape_and_finite(name: str, batch: int) -> None:
    head = build_head(name).eval()
    logits = head(fused(batch))
    assert logits.shape == (batch, 5)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", HEADS)
def test_backward_reaches_every_parameter(name: str) -> None:
    head = build_head(name).train()
    torch.nn.functional.cross_entropy(head(fused(4)), torch.tensor([0, 1, 2, 4])).backward()
    for pname, param in head.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname


@pytest.mark.parametrize("name", HEADS)
def test_logits_come_from_pooled_only(name: str) -> None:
    head = build_head(name).eval()
    a = fused(2)
    b = EncoderOutput(tokens=torch.randn_like(a.tokens), mask=a.mask, pooled=a.pooled)
    torch.testing.assert_close(head(a), head(b))


@pytest.mark.parametrize("name", HEADS)
def test_wrong_pooled_width_is_a_clear_error(name: str) -> None:
    with pytest.raises(ValueError, match=r"\[B, 32\].*\(2, 16\)"):
        build_head(name)(fused(2, dim=16))


def test_argument_validation() -> None:
    with pytest.raises(ValueError, match="activation"):
        MLPClassifier(input_dim=8, num_labels=2, hidden_dim=8, activation="swish")
    with pytest.raises(ValueError, match="num_labels"):
        LinearClassifier(input_dim=8, num_labels=0)
    with pytest.raises(TypeError):
        LinearClassifier(8, 2)  # type: ignore[misc]
    assert isinstance(build_head("mlp", activation="relu").mlp[1], torch.nn.ReLU)

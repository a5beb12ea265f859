"""Shared fixtures for the fusion tests: shipped YAML loading and random multimodal inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput, masked_mean

# modality -> (encoder output dim, token count)
MODALITIES: dict[str, tuple[int, int]] = {"video": (24, 5), "audio": (16, 7), "text": (32, 6)}
INPUT_DIMS = {name: dim for name, (dim, _) in MODALITIES.items()}

MakeInputs = Callable[..., dict[str, EncoderOutput]]
BuildFusion = Callable[..., nn.Module]


def fusion_config_dir() -> Path:
    return Path(str(resources.files("mmtrain.configs") / "model" / "fusion"))


def build_fusion(name: str, input_dims: Mapping[str, int] = INPUT_DIMS, **overrides) -> nn.Module:
    """Instantiate the shipped ``model/fusion/<name>.yaml`` the way the builder will."""
    cfg = OmegaConf.load(fusion_config_dir() / f"{name}.yaml")
    return hydra.utils.instantiate(cfg, input_dims=dict(input_dims), **overrides)


def random_inputs(
    batch: int = 3,
    lengths: Mapping[str, int] | None = None,
    *,
    seed: int = 0,
    padded: bool = True,
    names: Sequence[str] | None = None,
) -> dict[str, EncoderOutput]:
    """Random ``EncoderOutput`` per modality; with ``padded`` every sample after the first has a
    random number (>= 1) of real tokens, right-padded, and padding holds random values."""
    gen = torch.Generator().manual_seed(seed)
    names = list(names or MODALITIES)
    lengths = dict(lengths or {n: MODALITIES[n][1] for n in names})
    inputs: dict[str, EncoderOutput] = {}
    for name in names:
        dim, n = INPUT_DIMS[name], lengths[name]
        tokens = torch.randn(batch, n, dim, generator=gen)
        real = torch.full((batch,), n)
        if padded and batch > 1:
            real[1:] = torch.randint(1, n + 1, (batch - 1,), generator=gen)
        mask = torch.arange(n)[None, :] < real[:, None]
        inputs[name] = EncoderOutput(tokens=tokens, mask=mask, pooled=masked_mean(tokens, mask))
    return inputs


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: intra-op threads only add contention on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_inputs() -> MakeInputs:
    """``make_inputs(batch=3, lengths=None, *, seed=0, padded=True, names=None)``."""
    return random_inputs


@pytest.fixture
def build() -> BuildFusion:
    """``build(name, input_dims=video 24 / audio 16 / text 32, **overrides)`` from shipped YAML."""
    return build_fusion


@pytest.fixture
def config_dir() -> Path:
    """Directory of the shipped fusion YAML files."""
    return fusion_config_dir()

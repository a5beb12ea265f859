"""glibc malloc tuning (``malloc_tuning``): accepted by this machine's glibc, and a config key."""

from __future__ import annotations

import sys

import pytest

from mmtrain.config.compose import compose_config
from mmtrain.training import allocator
from mmtrain.training.run import prepare


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_glibc_accepts_every_setting() -> None:
    assert allocator.tune_malloc() is True


@pytest.mark.parametrize("value", [True, False])
def test_malloc_tuning_is_a_config_key(value: bool) -> None:
    cfg, _ = prepare(compose_config(["experiment=demo", f"malloc_tuning={str(value).lower()}"]))
    assert cfg.malloc_tuning is value

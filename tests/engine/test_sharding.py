"""FSDP2 sharding plan (mmtrain.engine.sharding): which classes are blocks, and the models it refuses.
Sharding itself runs for real in tests/integration/test_ddp.py (2 gloo processes)."""

from __future__ import annotations

import pytest
from models.test_llm_model import make

from mmtrain.engine.sharding import block_class_names, shard_model


def test_blocks_are_what_the_models_inside_declare() -> None:
    model, _ = make()
    names = block_class_names(model)
    assert "GPT2Block" in names  # transformers' GPT-2 declares its block (_no_split_modules)
    assert {"TransformerEncoderLayer", "TransformerDecoderLayer"} <= names


def test_a_model_with_an_lm_decoder_is_refused_by_name() -> None:
    model, _ = make()
    with pytest.raises(ValueError, match="trainer=fsdp2 does not shard a LLMModel yet"):
        shard_model(model, mesh=None)

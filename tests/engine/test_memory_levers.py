"""Gradient checkpointing and the attention implementation on real built models: which layers recompute,
that the step's loss and gradients stay the same, and that checkpointed blocks really run twice."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_layers import GradientCheckpointingLayer

from mmtrain.config.compose import compose_config
from mmtrain.config.targets import runtime_prefixes
from mmtrain.engine.build import build_model
from mmtrain.engine.memory import hf_models
from mmtrain.models.processing import model_inputs

DIGITS = [str(i) for i in range(10)]
# the demo's classifier with a tiny ViT image slot and a BERT text tower (Hugging Face), bottleneck fusion
# (mmtrain's blocks), nothing random in the forward
DEMO = ["experiment=demo", "model/encoders/image=vit", "model.fusion.dropout=0", "model.encoders.video.dropout=0",
        "model.encoders.audio.dropout=0"]


def built(*overrides: str):
    cfg = compose_config([*DEMO, *overrides])
    torch.manual_seed(0)
    return build_model(cfg, DIGITS, runtime_prefixes())


def batch(model) -> dict:
    torch.manual_seed(1)
    b = {"pixel_values": torch.randn(3, 3, 16, 16), "pixel_values_videos": torch.randn(3, 4, 3, 16, 16),
         "video_attention_mask": torch.ones(3, 4, dtype=torch.long), "input_features": torch.randn(3, 80, 100),
         "audio_attention_mask": torch.ones(3, 100, dtype=torch.long), "input_ids": torch.randint(0, 1000, (3, 8)),
         "attention_mask": torch.ones(3, 8, dtype=torch.long), "labels": torch.tensor([1, 2, 3])}
    return {**b, **{f"{m}_present": torch.ones(3, dtype=torch.bool) for m in model.encoders}}


def step(model, inputs: dict) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad()
    torch.manual_seed(2)  # the same dropout masks (a recompute replays the forward's random state)
    loss = model(**model_inputs(inputs)).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_checkpointing_recomputes_every_block_and_changes_no_number() -> None:
    plain, levered = built(), built("model.gradient_checkpointing=true")
    layers = [m for m in levered.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) >= 6 and all(m.gradient_checkpointing for m in layers)  # ViT + BERT layers, fusion blocks
    assert not any(m.gradient_checkpointing for m in plain.modules() if isinstance(m, GradientCheckpointingLayer))
    ours = [m for m in levered.fusion.modules() if isinstance(m, GradientCheckpointingLayer)]
    calls = []
    ours[0].attn.register_forward_hook(lambda *_: calls.append(1))  # the block itself is recomputed by forward()
    inputs = batch(plain)
    loss, grads = step(plain, inputs)
    levered_loss, levered_grads = step(levered, inputs)
    assert len(calls) == 2  # the forward, then the recompute in the backward pass
    assert levered_loss == pytest.approx(loss, abs=1e-6) and grads.keys() == levered_grads.keys()
    for name in grads:
        torch.testing.assert_close(levered_grads[name], grads[name], atol=1e-5, rtol=1e-4, msg=name)
    levered.eval()
    calls.clear()
    with torch.no_grad():
        levered(**model_inputs(inputs))
    assert len(calls) == 1  # evaluation does not recompute


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_the_attention_implementation_reaches_every_hugging_face_model(implementation: str) -> None:
    model = built(f"model.attn_implementation={implementation}")
    towers = hf_models(model)
    assert {name for name, _ in towers} == {"encoders.image.model", "encoders.text.model"}
    assert all(module.config._attn_implementation == implementation for _, module in towers)


def test_an_attention_kernel_that_is_not_installed_is_named() -> None:
    with pytest.raises(ValueError, match=r"model.attn_implementation=flash_attention_2: .* \(at encoders\.\w+\.model\)"):
        built("model.attn_implementation=flash_attention_2")


@pytest.mark.parametrize("decoder", ["gpt2", "trm"])
def test_the_lm_decoder_recomputes_too(decoder: str) -> None:
    cfg = compose_config(["experiment=emotion_llm", f"model/decoder={decoder}", "model.gradient_checkpointing=true",
                          "model.lora=null"])
    from mmtrain.engine.build import build_data

    processor = build_data(cfg, runtime_prefixes()).processor
    model = build_model(cfg, DIGITS, runtime_prefixes(), facts=processor.model_facts())
    lm_layers = [m for m in model.decoder.lm.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert lm_layers and all(m.gradient_checkpointing for m in lm_layers)

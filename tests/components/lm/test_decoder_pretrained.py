"""A real local LM folder (written here with save_pretrained) loads as the decoder, grows for marker
tokens keeping its trained rows, and trains inside emotion_llm by config alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from mmtrain.config.compose import compose_config
from mmtrain.components.lm.decoder import CausalLMDecoder
from mmtrain.components.lm.tokenizers import builtin_tokenizer


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    vocab = len(builtin_tokenizer("gpt2"))
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=128))
    folder = tmp_path_factory.mktemp("lm") / "tiny-gpt2"
    lm.save_pretrained(folder)
    return folder


def test_pretrained_weights_load_and_new_rows_are_appended(lm_folder: Path) -> None:
    saved = GPT2LMHeadModel.from_pretrained(lm_folder)
    old = saved.get_input_embeddings().weight.shape[0]
    decoder = CausalLMDecoder(model_type="gpt2", pretrained_path=str(lm_folder), vocab_size=old + 3)
    weights = decoder.lm.get_input_embeddings().weight
    assert weights.shape[0] == old + 3 and decoder.hidden_size == 32
    assert torch.equal(weights[:old], saved.get_input_embeddings().weight)
    block = "transformer.h.1.mlp.c_fc.weight"
    assert torch.equal(decoder.lm.state_dict()[block], saved.state_dict()[block])


def test_a_tokenizer_smaller_than_the_pretrained_lm_is_refused(lm_folder: Path) -> None:
    with pytest.raises(ValueError, match="use the LM's own tokenizer"):
        CausalLMDecoder(model_type="gpt2", pretrained_path=str(lm_folder), vocab_size=100)


@pytest.mark.slow
def test_emotion_llm_trains_on_a_local_pretrained_lm(lm_folder: Path, tmp_path: Path) -> None:
    from mmtrain.app.commands.train import train

    cfg = compose_config([
        "experiment=emotion_llm", "data=synthetic", "data.train.num_samples=16", "data.val.num_samples=8",
        "data.test.num_samples=8", "data.batch_size=8", "trainer.max_epochs=1", "callbacks.progress=null",
        "logger.tensorboard=null", "trainer.num_sanity_val_steps=0", "model.projector.num_tokens=2",
        f"model.decoder.pretrained_path={lm_folder}", "model.decoder.config=null", f"run_dir={tmp_path / 'run'}",
    ])
    metrics = train(cfg)
    stored = json.loads((tmp_path / "run" / "export" / "config.json").read_text())["decoder"]
    assert metrics["global_steps"] == 2 and stored["pretrained_path"] is None  # the export is self-contained
    assert stored["config"]["n_embd"] == 32
    # emotion_llm tunes with LoRA: on a pretrained LM the adapter-only export sits beside the merged one
    adapter = tmp_path / "run" / "export" / "adapter"
    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    merged_bytes = (tmp_path / "run" / "export" / "model.safetensors").stat().st_size
    assert (adapter / "adapter_model.safetensors").stat().st_size < merged_bytes / 20


def test_the_chunked_lm_head_loss_equals_the_whole_one_in_value_and_gradients() -> None:
    from mmtrain.components.lm.decoder import head_nll

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    results = []
    for chunk in (1024, 5):  # one piece; eight pieces, each recomputed in the backward pass
        head.zero_grad()
        hidden.grad = None
        loss = head_nll(head, hidden, targets, chunk=chunk)
        loss.backward()
        results.append((loss.detach(), head.weight.grad.clone(), hidden.grad.clone()))
    for whole, chunked in zip(*results):
        torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    expected = torch.nn.functional.cross_entropy(head(hidden), targets, reduction="sum")
    torch.testing.assert_close(results[0][0], expected.detach())

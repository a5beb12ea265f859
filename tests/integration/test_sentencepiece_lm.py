"""A LLaMA-2-style tokenizer (a sentencepiece ``tokenizer.model``, no ``tokenizer.json``) in the LLM route:
trained offline here with the sentencepiece package, loaded by folder, marker tokens added, a Llama LM trained."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from mmtrain.app.commands.train import train
from mmtrain.config.compose import compose_config

pytestmark = pytest.mark.slow


def write_llama2_tokenizer(folder: Path) -> bytes:
    """A 300-piece BPE sentencepiece model with LLaMA-2's conventions (<unk> 0, <s> 1, </s> 2, byte fallback)."""
    import sentencepiece as spm

    lines = [f"the digit {w} is shown in picture {i}" for i in range(100) for w in ("zero", "one", "two", "three")]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=300, model_type="bpe",
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, minloglevel=2)
    folder.mkdir(parents=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True}))
    return model.getvalue()


def test_a_sentencepiece_llama2_tokenizer_folder_trains_the_llm_route(tmp_path: Path) -> None:
    import sentencepiece as spm
    from transformers import AutoTokenizer

    folder = tmp_path / "llama2-tokenizer"
    proto = write_llama2_tokenizer(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    pieces = spm.SentencePieceProcessor(model_proto=proto)
    text = "the digit three is shown"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == pieces.encode(text)  # sentencepiece's own ids
    assert len(tokenizer) == 300 and tokenizer.eos_token_id == 2
    run = tmp_path / "run"
    metrics = train(compose_config([
        "experiment=emotion_llm", "data=synthetic", "data.train.num_samples=16", "data.val.num_samples=8",
        "data.test.num_samples=8", "data.batch_size=8", "trainer.max_epochs=1", "callbacks.progress=null",
        "logger.tensorboard=null", "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0",
        "model.projector.num_tokens=2", "model/decoder=llama", f"data.processor.tokenizer={folder}",
        "data.processor.prompt.max_length=128",
        "model.lora.target_modules=[q_proj,v_proj]", f"run_dir={run}"]))
    assert metrics["global_steps"] == 2 and 0.0 <= metrics["test"]["acc"] <= 1.0
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["lm_vocab_size"] > 300  # the prompt's markers were added after the 300 pieces
    assert min(config["media_token_ids"].values()) >= 300 and config["class_token_id"] >= 300

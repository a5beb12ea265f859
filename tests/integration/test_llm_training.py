"""LLM-decoder classification end to end: prompt with markers, pseudo-tokens, head at the class token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoProcessor

import mmtrain.models  # noqa: F401
from mmtrain.config.compose import compose_config
from mmtrain.models.processing import model_inputs
from mmtrain.app.commands.evaluate import export_checkpoint
from mmtrain.app.commands.train import train

pytestmark = pytest.mark.slow

TINY = ["experiment=emotion_llm", "data=synthetic", "data.train.num_samples=16", "data.val.num_samples=8",
        "data.test.num_samples=8", "data.batch_size=8", "trainer.max_epochs=2", "callbacks.progress=null",
        "logger.tensorboard=null", "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0",
        "model.projector.num_tokens=2"]


def test_trains_exports_and_predicts(tmp_path: Path) -> None:
    metrics = train(compose_config([*TINY, f"run_dir={tmp_path / 'run'}"]))
    assert metrics["global_steps"] == 4 and 0.0 <= metrics["test"]["acc"] <= 1.0
    export = tmp_path / "run" / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["model_type"] == "mmtrain_llm" and set(config["media_token_ids"]) == {"video", "audio"}
    model = AutoModel.from_pretrained(export)
    processor = AutoProcessor.from_pretrained(export)
    assert processor.model_facts()["media_token_ids"] == model.config.media_token_ids
    sample = {"id": "x", "video": torch.randint(0, 255, (4, 16, 16, 3), dtype=torch.uint8).numpy(),
              "audio": torch.zeros(16000).numpy(), "text": "hello"}
    batch = model_inputs(processor([sample]))
    assert int((batch["lm_input_ids"] == model.config.media_token_ids["video"]).sum()) == 2
    # Trained with LoRA (emotion_llm): the checkpoint holds adapters, the export has them merged in.
    best = torch.load(metrics["best_checkpoint"], weights_only=True)["state_dict"]
    assert any(".lora_A." in k for k in best) and config["lora"] is None
    assert not any("lora" in k or "base_layer" in k for k in model.state_dict())
    again = AutoModel.from_pretrained(export_checkpoint(metrics["best_checkpoint"], tmp_path / "again"))
    with torch.no_grad():
        logits = model(**batch).logits
        assert logits.shape == (1, len(model.config.id2label))
        assert torch.allclose(logits, again(**batch).logits, atol=1e-5)


def test_an_over_long_prompt_stops_the_run_naming_the_sample(tmp_path: Path) -> None:
    cfg = compose_config([*TINY, "data.processor.prompt.max_length=8", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match=r"token budget: 16 data.train samples are over the budget of 8 tokens "
                                         r"\(data.processor.prompt.max_length\): 'train-\d+' \(\d+ tokens\)"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_a_prompt_with_a_classifier_model_is_refused(tmp_path: Path) -> None:
    classifier = [o for o in TINY if not o.startswith("model.projector")]
    cfg = compose_config([*classifier, "model=multimodal", "~model.lora", "data.processor.prompt.num_tokens=2",
                          f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match="takes no prompt"):
        train(cfg)


@pytest.mark.parametrize(("family", "tokenizer"), [("qwen2", "builtin:qwen2.5"), ("llama", "builtin:llama3"),
                                                   ("trm", "builtin:gpt2")])
def test_another_lm_family_and_tokenizer_by_config_alone(family: str, tokenizer: str, tmp_path: Path) -> None:
    cfg = compose_config([*TINY, f"model/decoder={family}", f"data.processor.tokenizer={tokenizer}",
                          "model.lora.target_modules=[q_proj,v_proj]",  # the family's own layer names
                          "trainer.max_epochs=1", f"run_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    config = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert config["decoder"]["model_type"] == {"trm": "mmtrain_trm"}.get(family, family)
    model = AutoModel.from_pretrained(tmp_path / "run" / "export")
    processor = AutoProcessor.from_pretrained(tmp_path / "run" / "export")
    assert model.decoder.vocab_size == len(processor.tokenizer) == config["lm_vocab_size"]
    assert metrics["global_steps"] == 2 and 0.0 <= metrics["test"]["acc"] <= 1.0

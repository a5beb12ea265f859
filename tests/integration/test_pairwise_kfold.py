"""Pairwise comparison end to end on a tiny image set written here: train, and kfold through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from mmtrain.app.cli import main
from mmtrain.config.compose import compose_config
from mmtrain.data.formats.image_pairs import make_pair_folds, write_pair_csv
from mmtrain.app.commands.train import train

FAST = ["trainer.max_epochs=1", "callbacks.progress=null", "logger.tensorboard=null", "data.batch_size=8",
        "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0", "model.encoders.image.config.hidden_size=16",
        "model.encoders.image.config.intermediate_size=16", "model.encoders.image.config.num_hidden_layers=1",
        "model.encoders.image.config.patch_size=8", "model.head.hidden_dim=8"]


def write_items(root: Path, count: int = 18) -> Path:
    """``count`` 16-px images whose brightness is their score (0..5); a jsonl of path + score."""
    lines = []
    for index in range(count):
        score = index % 6
        path = f"img/{index:02d}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (40 * score, 40 * score, 40 * score)).save(root / path)
        lines.append(json.dumps({"path": path, "score": score}))
    items = root / "items.jsonl"
    items.write_text("\n".join(lines) + "\n")
    return items


def data_overrides(root: Path, csvs: dict[str, Path]) -> list[str]:
    return ["experiment=pairwise_digits", "~data.prepare", f"data.train.image_root={root}",
            *(f"data.{split}.csv_path={path}" for split, path in csvs.items())]


def test_train_on_a_tiny_pair_set(tmp_path: Path) -> None:
    items = [(json.loads(line)["path"], json.loads(line)["score"]) for line in write_items(tmp_path).read_text().splitlines()]
    (train_pairs, eval_pairs), *_ = make_pair_folds(items, k=2, seed=0, pairs_per_item=4)
    csvs = {"train": write_pair_csv(train_pairs, tmp_path / "train.csv"),
            "val": write_pair_csv(eval_pairs, tmp_path / "val.csv"), "test": write_pair_csv(eval_pairs, tmp_path / "test.csv")}
    cfg = compose_config([*data_overrides(tmp_path, csvs), *FAST, f"run_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    test = metrics["test"]
    assert {"acc", "macro_f1", "confusion", "bt_pearson", "bt_spearman", "bt_pearson_from_labels",
            "swap_consistency_rate"} <= set(test)
    assert test["bt_items"] == len({p for row in eval_pairs for p in (row.img1, row.img2)})
    assert "test_only_one_modality" not in metrics
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["test"]["acc"] == test["acc"]
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    # predict compares two images given as a pair; its probabilities equal the model's on that pair
    from mmtrain.app.commands.evaluate import evaluate
    from mmtrain.app.commands.predict import predict

    first, second = str(tmp_path / eval_pairs[0].img1), str(tmp_path / eval_pairs[0].img2)
    answer = predict(tmp_path / "run", image=[first, second])
    assert answer["label"] in ("First", "Second", "Similar") and answer["modalities_used"] == ["image"]
    assert abs(sum(answer["probabilities"].values()) - 1.0) < 1e-5
    with pytest.raises(ValueError, match="compares two items"):
        predict(tmp_path / "run", image=first)
    # eval rebuilds the pairwise task from the run's config: Bradley-Terry figures come back
    scored = evaluate(tmp_path / "run")
    assert scored["test"]["acc"] == pytest.approx(test["acc"]) and "bt_spearman" in scored["test"]


@pytest.mark.slow
def test_kfold_command_writes_disjoint_folds_and_a_summary(tmp_path: Path) -> None:
    items = write_items(tmp_path)
    run = tmp_path / "kf"
    replaced = {split: tmp_path / "replaced_by_kfold.csv" for split in ("train", "val", "test")}
    code = main(["kfold", *data_overrides(tmp_path, replaced), *FAST, f"run_dir={run}", "kfold.k=3", "kfold.pairs_per_item=4",
                 f"kfold.items=[{{file:'{items}',path_key:path,score_key:score}}]"])
    assert code == 0
    report = json.loads((run / "kfold.json").read_text())
    assert len(report["folds"]) == 3 and report["failed"] == []
    tested: list[set[str]] = []
    for index in range(3):
        images = {}
        for split in ("train", "val", "test"):
            with (run / f"fold_{index}" / "pairs" / f"{split}.csv").open(newline="") as handle:
                images[split] = {p for row in csv.DictReader(handle) for p in (row["img1"], row["img2"])}
        assert images["train"].isdisjoint(images["val"]) and images["train"].isdisjoint(images["test"])
        assert images["val"].isdisjoint(images["test"])
        tested.append(images["test"])
        fold_metrics = json.loads((run / f"fold_{index}" / "metrics.json").read_text())
        assert fold_metrics["test"]["acc"] == report["folds"][index]["test"]["acc"]
    assert all(a.isdisjoint(b) for i, a in enumerate(tested) for b in tested[i + 1:])
    for metric in ("acc", "macro_f1", "bt_pearson", "bt_spearman"):
        assert report["summary"][metric]["n"] == 3
        assert report["summary"][metric]["mean"] is not None and report["summary"][metric]["std"] >= 0
    page = (run / "report.html").read_text()
    assert "mean ± std over folds" in page and f"{report['summary']['acc']['mean']:.4f}" in page


def test_a_failing_fold_keeps_the_finished_ones(tmp_path: Path) -> None:
    from mmtrain.app.commands.kfold import run_kfold

    items = write_items(tmp_path)
    replaced = {split: tmp_path / "replaced_by_kfold.csv" for split in ("train", "val", "test")}
    cfg = compose_config([*data_overrides(tmp_path, replaced), f"run_dir={tmp_path / 'kf'}", "kfold.k=3",
                          f"kfold.items=[{{file:'{items}',path_key:path,score_key:score}}]"])

    def train_fn(fold_cfg) -> dict:  # stands in for train(): fold 1 breaks, the others report
        if fold_cfg.run_dir.endswith("fold_1"):
            raise RuntimeError("out of memory")
        return {"test": {"acc": 0.5 if fold_cfg.run_dir.endswith("fold_0") else 0.7, "macro_f1": 0.4}}

    report = run_kfold(cfg, train_fn)
    written = json.loads((tmp_path / "kf" / "kfold.json").read_text())
    assert written["failed"] == report["failed"] == [1] and "out of memory" in written["folds"][1]["error"]
    assert written["summary"]["acc"]["n"] == 2 and abs(written["summary"]["acc"]["mean"] - 0.6) < 1e-9
    assert (tmp_path / "kf" / "fold_1" / "error.txt").is_file()

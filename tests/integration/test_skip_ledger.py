"""Broken media during real training: skipped, written to the ledger (across workers), budgeted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmtrain.config.compose import compose_config
from mmtrain.engine.callbacks.ledger import SkipBudgetExceeded
from mmtrain.app.commands.train import train

pytestmark = pytest.mark.slow

LABELS = ["dark", "bright"]


def write_set(root: Path, broken: int, broken_split: str = "train", sizes: tuple[int, int, int] = (32, 8, 8)) -> list[str]:
    """Image-text JSONL per split; in ``broken_split``, the first ``broken`` images are cut or random bytes."""
    rng = np.random.default_rng(0)
    bad: list[str] = []
    for split, count in zip(("train", "val", "test"), sizes, strict=True):
        lines = []
        for index in range(count):
            label = index % 2
            name = f"{split}_{index}.png"
            pixels = rng.integers(0, 80, (12, 12, 3)) + 150 * label
            buffer = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
            data = buffer.getvalue()
            if split == broken_split and index < broken:
                data = data[: len(data) // 2] if index % 2 else rng.bytes(300)
                bad.append(name)
            (root / name).write_bytes(data)
            lines.append(json.dumps({"image_path": name, "caption": "a picture", "label": LABELS[label]}))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return bad


def overrides(root: Path, run_dir: Path, budget: float) -> list[str]:
    return [
        "data=metadata", f"data.train.path={root}/train.jsonl", f"data.val.path={root}/val.jsonl",
        f"data.test.path={root}/test.jsonl", f"data.train.root={root}", "+data.train.label_key=label",
        f"+data.train.label_names={LABELS}", "+data.val.label_key=label", "+data.val.label_names=${data.train.label_names}",
        "+data.test.label_key=label", "+data.test.label_names=${data.train.label_names}",
        "model/encoders/image=vit", "~model/encoders/video", "~model/encoders/audio",
        "data.batch_size=8", "data.num_workers=2", "trainer.max_epochs=2", "callbacks.progress=null",
        f"callbacks.skip_ledger.max_skip_fraction={budget}", f"run_dir={run_dir}",
    ]


def test_broken_images_are_skipped_and_ledgered(tmp_path: Path) -> None:
    bad = write_set(tmp_path, broken=3)
    metrics = train(compose_config(overrides(tmp_path, tmp_path / "run", budget=0.2)))
    ledger = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    train_entries = [e for e in ledger if e["split"] == "train"]
    assert sorted({Path(e["file"]).name for e in train_entries}) == sorted(bad)
    assert len(train_entries) == 3 * 2, "each broken file once per epoch, from both workers"
    assert {e["epoch"] for e in train_entries} == {0, 1}
    assert all(e["modality"] == "image" and e["error"] and e["id"] for e in train_entries)
    assert metrics["skipped"]["train"] == {"seen": 64, "skipped": 6}
    assert metrics["test"]["acc"] >= 0.0


def test_skip_budget_stops_the_run_with_a_clear_error(tmp_path: Path) -> None:
    write_set(tmp_path, broken=8)
    with pytest.raises(SkipBudgetExceeded) as err:
        train(compose_config(overrides(tmp_path, tmp_path / "run", budget=0.1)))
    assert "skipped.jsonl" in str(err.value) and "max_skip_fraction=0.1" in str(err.value)
    assert "mmtrain data check" in str(err.value)
    assert (tmp_path / "run" / "skipped.jsonl").is_file()


def test_corruption_within_the_budget_never_stops_the_run(tmp_path: Path) -> None:
    """5 of 100 val samples broken, all at the start (val is not shuffled), budget 5%: the old rule
    judged the first 32 samples seen (15.6%) and stopped; the split's known size says it is within."""
    write_set(tmp_path, broken=5, broken_split="val", sizes=(32, 100, 8))
    metrics = train(compose_config(overrides(tmp_path, tmp_path / "run", budget=0.05)))
    assert metrics["skipped"]["val"] == {"seen": 300, "skipped": 15}  # 2 epochs + the best-weights pass


def test_budget_rules_for_known_sizes_and_streams(tmp_path: Path) -> None:
    from mmtrain.engine.callbacks.ledger import SkipLedger, wilson_lower_bound

    ledger = SkipLedger(run_dir=str(tmp_path), max_skip_fraction=0.05)
    ledger.pass_seen["val"], ledger.epoch_skipped["val"] = 96, 5
    ledger._check_budget("val", 100)  # 5 of 100 at most: within, whatever the rest holds
    ledger.epoch_skipped["val"] = 6
    with pytest.raises(SkipBudgetExceeded, match="already more than 5.0% of the 100 samples"):
        ledger._check_budget("val", 100)
    ledger.pass_seen["train"], ledger.epoch_skipped["train"] = 96, 5
    ledger._check_budget("train", None)  # a stream: 5.2% seen is no evidence of more than 5%
    ledger.pass_seen["train"], ledger.epoch_skipped["train"] = 64, 20
    with pytest.raises(SkipBudgetExceeded, match="99.9% confidence"):
        ledger._check_budget("train", None)
    assert wilson_lower_bound(0, 100) == 0.0 and 0.0 < wilson_lower_bound(50, 100) < 0.5


def test_data_check_lists_every_bad_file_without_training(tmp_path: Path) -> None:
    from mmtrain.app.cli import console, main

    bad = write_set(tmp_path, broken=5)
    out = tmp_path / "check.jsonl"
    args = ["data", "check", *overrides(tmp_path, tmp_path / "run", budget=0.1), "--out", str(out)]
    with console.capture() as captured:
        code = main(args)
    assert code == 1, "5 of 32 train samples is over a 10% budget"
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(e["file"]).name for e in lines) == sorted(bad)  # each once, from 2 workers
    assert {e["split"] for e in lines} == {"train"} and all(e["error"] and e["id"] for e in lines)
    text = captured.get()
    assert "train" in text and "15.62%" in text and str(out) in text.replace("\n", "")
    assert not (tmp_path / "run").exists(), "a data check trains nothing and writes no run directory"
    with console.capture():
        assert main(["data", "check", *overrides(tmp_path, tmp_path / "run", budget=0.2), "--out", str(out)]) == 0

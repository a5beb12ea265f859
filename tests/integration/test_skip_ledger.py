"""Broken media during real training: skipped, written to the ledger (across workers), budgeted."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmtrain.config.compose import compose_config
from mmtrain.training.ledger import SkipBudgetExceeded
from mmtrain.training.run import train

pytestmark = pytest.mark.slow

LABELS = ["dark", "bright"]


def write_set(root: Path, broken: int) -> list[str]:
    """Image-text JSONL per split; in train, ``broken`` images are cut or random bytes."""
    rng = np.random.default_rng(0)
    bad: list[str] = []
    for split, count in (("train", 32), ("val", 8), ("test", 8)):
        lines = []
        for index in range(count):
            label = index % 2
            name = f"{split}_{index}.png"
            pixels = rng.integers(0, 80, (12, 12, 3)) + 150 * label
            buffer = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="PNG")
            data = buffer.getvalue()
            if split == "train" and index < broken:
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
    assert (tmp_path / "run" / "skipped.jsonl").is_file()

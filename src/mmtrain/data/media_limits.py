"""What the media decoder accepts: segment times it can seek to, and how many pixels it will hold.

Hostile or damaged inputs (a segment ``end`` of ``1e300``, ``NaN``, an 8192x8192 video, a PNG
declaring 144 Mpx) become a skipped sample with the reason, never a crash or a memory blow-up.
"""

from __future__ import annotations

import math

#: Video frames larger than this are scaled down (aspect kept) by the decoder's one RGB conversion,
#: so a huge frame never exists as full-size RGB (1080p: processors resize to a few hundred pixels).
MAX_FRAME_PIXELS = 1920 * 1080
#: Images declaring more pixels than this are skipped (into skipped.jsonl) before being decoded.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
#: A video segment may end this many seconds after the stream's known duration (rounding, a last
#: frame shown a little longer); further is a segment that does not fit the file.
END_SLACK_SECONDS = 1.0


def fit_pixels(width: int, height: int, cap: int = MAX_FRAME_PIXELS) -> tuple[int | None, int | None]:
    """``(width, height)`` scaled to at most ``cap`` pixels with the aspect kept (even sizes, for
    chroma-subsampled sources), or ``(None, None)`` when the frame is within the cap already."""
    if width * height <= cap:
        return None, None
    scale = math.sqrt(cap / (width * height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def segment_problem(modality: str, start: float, end: float | None, duration: float | None) -> str | None:
    """Why a decoder cannot read ``[start, end)`` seconds of a stream ``duration`` seconds long
    (``None``: unknown), or ``None`` when it can: times must be finite, ``0 <= start < end``, the
    segment must start before the stream ends and (video) not end far after it."""
    if not math.isfinite(start) or (end is not None and not math.isfinite(end)):
        return f"segment [{start}, {end}) is not finite"
    if start < 0 or (end is not None and end <= start):
        return f"segment [{start}, {end}) needs 0 <= start < end"
    if duration is None:
        return None
    if start >= duration:
        return f"segment [{start}, {end}) starts after the {modality} ends ({duration:.2f} s)"
    if modality == "video" and end is not None and end > duration + END_SLACK_SECONDS:
        return f"segment [{start}, {end}) runs past the video, which ends at {duration:.2f} s"
    return None

"""Decoding benchmark of ``mmtrain.data.media`` (a script, not a test).

Prints, measured in the same run:

1. the time to load a 2 s segment (video frames + 16 kHz audio) from the middle of a 10 s video and
   from the middle of a 10-minute video with the same codec settings; the ratio should be close to 1
   (goal: <= 1.5), since segment reads seek instead of decoding from the start;
2. decoded frames per second of ``read_video_segment`` over the whole 10 s video vs a plain PyAV loop
   (``for f in container.decode(video=0): f.to_ndarray(format="rgb24")``) over the same file
   (goal: ratio >= 0.8);
3. context, no goal: the same 2 s segment of the 10 s video read through one shared container
   (``MediaFile``, what a dataset sample with video and audio does) vs two separate opens.

Both videos: 320x240, 25 fps, H.264 (libx264, yuv420p, GOP 50) + AAC mono 16 kHz, written with
PyAV into a cache folder (``$TMPDIR/mmtrain-bench-decode``) and reused by later runs.

Run: ``.venv/bin/python benchmarks/decode.py [--repeats 9] [--cache DIR]``. Exit code 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/harness.py, when run as a script
from harness import Result, console, goal_row, paired_medians, print_table  # noqa: E402

from mmtrain.data.demo.mux import write_mp4
from mmtrain.data.media import MediaFile, read_audio_segment, read_video_segment

WIDTH, HEIGHT, FPS, GOP, RATE = 320, 240, 25, 50, 16000
SHORT_SECONDS, LONG_SECONDS, SEGMENT_SECONDS = 10, 600, 2.0
SEGMENT_FRAMES = 16
SEGMENT_GOAL, DECODE_GOAL = 1.5, 0.8


def _frames(seconds: int) -> Iterator[np.ndarray]:
    """A moving textured pattern with a frame counter bar: cheap to make, not trivial to encode."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (HEIGHT, WIDTH * 2, 3), dtype=np.uint8)
    texture = ((texture.astype(np.uint16) + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) // 3).astype(np.uint8)
    for index in range(seconds * FPS):
        offset = (index * 3) % WIDTH
        frame = texture[:, offset : offset + WIDTH].copy()
        frame[: HEIGHT // 12, : (index % FPS + 1) * WIDTH // FPS] = 255
        yield frame


def _audio(seconds: int) -> np.ndarray:
    t = np.arange(seconds * RATE, dtype=np.float64) / RATE
    tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * (np.floor(t) % 4)) * t)
    return (tone + 0.01 * np.random.default_rng(1).normal(size=t.size)).astype(np.float32)


def make_video(path: Path, seconds: int) -> Path:
    """Write (once) a ``seconds``-long test video at ``path``."""
    if path.is_file() and path.stat().st_size > 0:
        return path
    partial = path.with_suffix(".partial.mp4")
    write_mp4(partial, _frames(seconds), _audio(seconds), fps=FPS, sample_rate=RATE, gop=GOP, crf=23,
              preset="veryfast", bitexact=False)
    partial.rename(path)
    return path


def load_segment(path: Path, middle: float, shared: bool = False) -> None:
    start, end = middle - SEGMENT_SECONDS / 2, middle + SEGMENT_SECONDS / 2
    with MediaFile(path) as file:
        source = file if shared else path
        frames = read_video_segment(source, num_frames=SEGMENT_FRAMES, start=start, end=end)
        audio = read_audio_segment(source, start=start, end=end)
    assert frames.shape == (SEGMENT_FRAMES, HEIGHT, WIDTH, 3) and abs(len(audio) - SEGMENT_SECONDS * RATE) <= 1


def plain_decode(path: Path) -> int:
    with av.open(str(path)) as container:
        count = 0
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            count += 1
    return count


def run(quick: bool = False, repeats: int | None = None, cache: Path | None = None) -> list[Result]:
    """The segment-seek ratio and the decode throughput ratio, as :class:`Result` rows."""
    repeats = repeats or (5 if quick else 9)
    cache = cache or Path(tempfile.gettempdir()) / "mmtrain-bench-decode"
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    short = make_video(cache / f"short_{SHORT_SECONDS}s_{WIDTH}x{HEIGHT}.mp4", SHORT_SECONDS)
    long = make_video(cache / f"long_{LONG_SECONDS}s_{WIDTH}x{HEIGHT}.mp4", LONG_SECONDS)
    console.print(f"videos ready in {time.perf_counter() - started:.1f} s (cache {cache})")

    seg_short, seg_long = paired_medians(lambda: load_segment(short, SHORT_SECONDS / 2),
                                         lambda: load_segment(long, LONG_SECONDS / 2), repeats)
    total = SHORT_SECONDS * FPS
    ours, plain = paired_medians(
        lambda: read_video_segment(short, num_frames=total, start=0.0, end=float(SHORT_SECONDS)),
        lambda: plain_decode(short), repeats)
    assert plain_decode(short) == total
    one_open, two_opens = paired_medians(lambda: load_segment(short, SHORT_SECONDS / 2, shared=True),
                                         lambda: load_segment(short, SHORT_SECONDS / 2), repeats)
    return [
        goal_row(f"data: {SEGMENT_SECONDS:g} s segment ({SEGMENT_FRAMES} frames + audio), 10-min vs 10-s video",
                 f"{seg_long * 1e3:.1f} ms", f"{seg_short * 1e3:.1f} ms", seg_long / seg_short, SEGMENT_GOAL,
                 at_most=True),
        goal_row(f"data: decode all {total} frames, read_video_segment vs plain PyAV",
                 f"{total / ours:.0f} fps", f"{total / plain:.0f} fps", plain / ours, DECODE_GOAL, at_most=False),
        Result(f"data: {SEGMENT_SECONDS:g} s segment of the 10-s video, one shared open vs two opens",
               f"{one_open * 1e3:.1f} ms", f"{two_opens * 1e3:.1f} ms", one_open / two_opens),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed runs per measurement (median)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "mmtrain-bench-decode")
    args = parser.parse_args()
    results = run(repeats=args.repeats, cache=args.cache)
    title = f"media decoding (median of {args.repeats}; {WIDTH}x{HEIGHT} {FPS} fps H.264 GOP {GOP} + AAC)"
    return 0 if print_table(title, results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

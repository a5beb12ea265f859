"""Draw every random choice of a split first (plan), then render clips from the plan.

Each clip draws from its own generator seeded by ``(seed, split, clip)``, so a clip does not depend
on the others: the same seed gives the same clips whatever the order or parallelism of rendering.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmtrain.data.demo.corrupt import (
    ClipStyle,
    audio_segment,
    draw_corruption,
    other_digit,
    text_segment,
    video_segment,
)
from mmtrain.data.demo.images import DigitImage, ImagePool
from mmtrain.data.demo.spec import MODALITIES, SPLITS, CorruptionConfig, MediaFormat
from mmtrain.data.demo.voices import Voice, VoiceBank, speech_segment

HUMAN_SHARE = 0.5  # share of clips spoken by a recorded (human) voice; the rest by espeak voices


@dataclass(frozen=True)
class SegmentPlan:
    """One one-second segment: its digit, image, corruption and what the corruptions show instead."""

    index: int
    label: int
    image: DigitImage
    corruption: dict[str, str]  # modality -> kind
    decoys: dict[str, int]  # modality -> the wrong digit a "decoy"/"swap" corruption shows
    decoy_image: DigitImage
    text: str
    seed: tuple[int, ...]  # of the generator that draws the segment's noise and jitter


@dataclass(frozen=True)
class ClipPlan:
    """One clip: a speaker, a look, and its segments."""

    split: str
    index: int
    voice: Voice
    style: ClipStyle
    segments: tuple[SegmentPlan, ...]

    @property
    def name(self) -> str:
        return f"clip_{self.index:04d}"

    def sample_id(self, segment: int) -> str:
        return f"{self.split}_{self.index:04d}_s{segment}"

    def voice_keys(self) -> set[tuple[Voice, int]]:
        """The (voice, digit) waveforms rendering needs."""
        keys = {(self.voice, s.label) for s in self.segments}
        keys |= {(self.voice, s.decoys["audio"]) for s in self.segments if s.corruption.get("audio") == "decoy"}
        return keys


def balanced_labels(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` digits with class counts differing by at most one, shuffled."""
    labels = np.resize(np.arange(10), count)
    rng.shuffle(labels)
    return labels


def plan_split(
    split: str, *, clips: int, seed: int, pool: ImagePool, voices: dict[str, list[Voice]],
    corruption: CorruptionConfig, media: MediaFormat,
) -> list[ClipPlan]:
    """Plans of ``clips`` clips of ``split`` (``voices``: ``{"recorded": [...], "espeak": [...]}``)."""
    split_id = SPLITS.index(split)
    per_clip = media.segments_per_clip
    labels = balanced_labels(np.random.default_rng([seed, split_id, 999_999]), clips * per_clip)
    plans = []
    for clip in range(clips):
        rng = np.random.default_rng([seed, split_id, clip])
        group = voices["recorded"] if rng.random() < HUMAN_SHARE else voices["espeak"]
        voice = group[int(rng.integers(len(group)))]
        style = ClipStyle.draw(rng)
        segments = []
        for index in range(per_clip):
            label = int(labels[clip * per_clip + index])
            image = pool.pick(rng, label)
            kinds = draw_corruption(rng, corruption)
            decoys = {m: other_digit(rng, label) for m in MODALITIES}
            decoy_image = pool.pick(rng, decoys["video"])
            text = text_segment(label, decoys["text"], kinds.get("text"), rng)
            segments.append(SegmentPlan(index, label, image, kinds, decoys, decoy_image, text,
                                        (seed, split_id, clip, index, 1)))
        plans.append(ClipPlan(split, clip, voice, style, tuple(segments)))
    return plans


@dataclass
class RenderedClip:
    """Media of a clip: ``frames`` uint8 [T,H,W,3], ``audio`` float32 [L] (16 kHz), and per segment
    the clean spoken digit ``clean_audio`` float32 [samples_per_segment] (for the audio views)."""

    frames: np.ndarray
    audio: np.ndarray
    clean_audio: list[np.ndarray]


def render_clip(plan: ClipPlan, bank: VoiceBank, media: MediaFormat) -> RenderedClip:
    """Frames and audio of every segment, corrupted as planned."""
    frames, audio, clean = [], [], []
    length = media.samples_per_segment
    for segment in plan.segments:
        rng = np.random.default_rng(list(segment.seed))
        speech = speech_segment(bank.get(plan.voice, segment.label), rng, length=length, rate=media.sample_rate)
        decoy = np.zeros(length, np.float32)
        if segment.corruption.get("audio") == "decoy":
            decoy = speech_segment(bank.get(plan.voice, segment.decoys["audio"]), rng, length=length,
                                   rate=media.sample_rate)
        audio.append(audio_segment(speech, decoy, segment.corruption.get("audio"), plan.style, rng))
        frames.append(video_segment(segment.image.pixels, segment.decoy_image.pixels,
                                    segment.corruption.get("video"), plan.style, rng, media))
        clean.append(speech)
    return RenderedClip(np.concatenate(frames), np.concatenate(audio), clean)

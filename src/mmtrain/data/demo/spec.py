"""Fixed facts of the "spoken digits" demo set: words, sizes, media format and corruption settings.

Everything a build depends on besides the seed lives here, so the builder, the views and the
manifest read one source of truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Where Debian's asterisk-core-sounds-* packages put the recorded voices.
SOUNDS_DIR = Path("/usr/share/asterisk/sounds")

DATASET_NAME = "spoken_digits"
# Bump when the layout or the generation changes, so ``ensure_demo`` rebuilds older sets.
FORMAT_VERSION = 3  # 2: trimodal metadata view, denser pair CSVs (issue 4); 3: instruction view (issue 5)
SPLITS = ("train", "val", "test")
MODALITIES = ("video", "audio", "text")

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# What a speaker of each language says for each digit (the asterisk recordings and espeak voices).
TRANSCRIPTS = {
    "en": WORDS,
    "es": ("cero", "uno", "dos", "tres", "cuatro", "cinco", "seis", "siete", "ocho", "nueve"),
    "fr": ("zéro", "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf"),
    "it": ("zero", "uno", "due", "tre", "quattro", "cinque", "sei", "sette", "otto", "nove"),
    "ru": ("ноль", "один", "два", "три", "четыре", "пять", "шесть", "семь", "восемь", "девять"),
}
# Text of a segment: the English word, sometimes inside a few distractor words.
TEXT_TEMPLATES = ("{w}", "{w}", "{w}", "the digit {w}", "number {w}", "I said {w}", "{w} please", "it is {w}")


@dataclass(frozen=True)
class MediaFormat:
    """How clips are written: ``segments_per_clip`` one-second segments of H.264 + AAC."""

    frame_size: int = 32  # square frames, pixels
    digit_size: int = 24  # the digit's box inside the frame, pixels
    fps: int = 8
    sample_rate: int = 16000
    segment_seconds: float = 1.0
    segments_per_clip: int = 4
    video_codec: str = "libx264"
    audio_codec: str = "aac"
    crf: int = 18
    audio_bit_rate: int = 48000

    @property
    def frames_per_segment(self) -> int:
        return int(round(self.fps * self.segment_seconds))

    @property
    def samples_per_segment(self) -> int:
        return int(round(self.sample_rate * self.segment_seconds))


MEDIA = MediaFormat()


@dataclass(frozen=True)
class SizeSpec:
    """Clips per split, and rows per parquet row group (several groups per split)."""

    train: int
    val: int
    test: int
    row_group_size: int

    def clips(self, split: str) -> int:
        return int(getattr(self, split))


SIZES = {
    "tiny": SizeSpec(train=4, val=2, test=2, row_group_size=4),
    "small": SizeSpec(train=300, val=50, test=50, row_group_size=64),
}


@dataclass(frozen=True)
class CorruptionConfig:
    """Per-segment corruption: each modality is corrupted with its probability, independently.

    When all three are drawn, one of them (uniformly) is left clean, so every segment keeps at least
    one faithful modality. The ``*_kinds`` weights choose how a corrupted modality is spoiled:

    - video: ``noise`` (random pixels), ``blank`` (flat frames), ``decoy`` (another digit, low contrast,
      under noise);
    - audio: ``noise`` (noise only), ``silence``, ``decoy`` (another digit, low volume, under noise);
    - text: ``swap`` (another digit's word), ``empty``.
    """

    video: float = 0.4
    audio: float = 0.35
    text: float = 0.45
    video_kinds: dict[str, float] = field(default_factory=lambda: {"noise": 0.35, "blank": 0.25, "decoy": 0.4})
    audio_kinds: dict[str, float] = field(default_factory=lambda: {"noise": 0.35, "silence": 0.25, "decoy": 0.4})
    text_kinds: dict[str, float] = field(default_factory=lambda: {"swap": 0.3, "empty": 0.7})

    def __post_init__(self) -> None:
        for modality in MODALITIES:
            rate = getattr(self, modality)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"corruption rate of {modality} must be in [0, 1], got {rate}")
            kinds = getattr(self, f"{modality}_kinds")
            if not kinds or any(w < 0 for w in kinds.values()) or sum(kinds.values()) <= 0:
                raise ValueError(f"{modality}_kinds needs positive weights, got {kinds}")
        allowed = {"video": {"noise", "blank", "decoy"}, "audio": {"noise", "silence", "decoy"},
                   "text": {"swap", "empty"}}
        for modality, names in allowed.items():
            unknown = set(getattr(self, f"{modality}_kinds")) - names
            if unknown:
                raise ValueError(f"unknown {modality} corruption kinds {sorted(unknown)}; known: {sorted(names)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> CorruptionConfig:
        return cls(**(data or {}))

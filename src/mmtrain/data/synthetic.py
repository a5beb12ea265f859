"""A small generated dataset in the raw-sample format, for tests and until real media is wired in.

Each sample carries its class in every modality, but one modality per sample (chosen at random)
is replaced by noise, so a model that fuses modalities beats any single one.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np
from torch.utils.data import Dataset

SPLIT_OFFSETS = {"train": 0, "val": 1_000_003, "test": 2_000_003}
DEFAULT_LABELS = ("neutral", "joy", "sadness", "anger")
WORDS = {
    "neutral": ["fine", "okay", "plain"],
    "joy": ["happy", "glad", "delighted"],
    "sadness": ["sad", "gloomy", "down"],
    "anger": ["angry", "furious", "mad"],
}
FILLERS = ["the", "meeting", "was", "today", "we", "talked", "about", "it", "and", "then", "left"]


class SyntheticDataset(Dataset):
    """Generated video + audio + image + text samples with a class signal in each.

    Args:
        num_samples: samples in this split.
        split: ``train``, ``val`` or ``test`` (different seeds, same distribution).
        seed: base seed; the same seed always gives the same samples.
        label_names: class names; their count is the number of classes.
        num_frames: frames per clip; each frame is ``frame_size x frame_size`` RGB.
        audio_seconds: clip length at 16 kHz.
        noise: probability that one modality of a sample is replaced by pure noise.
        modalities: the modalities to generate (``None``: all); media of others are left out, text
            always comes (cheap). Shipped configs pass ``${data.processor.modalities}``.

    Returns (per item): ``{"id", "video": uint8 [T,H,W,3], "image": uint8 [H,W,3],
    "audio": float32 [L], "text": str, "label": int}``.
    """

    def __init__(
        self,
        *,
        num_samples: int = 256,
        split: str = "train",
        seed: int = 0,
        label_names: list[str] | tuple[str, ...] = DEFAULT_LABELS,
        num_frames: int = 6,
        frame_size: int = 24,
        audio_seconds: float = 1.0,
        noise: float = 0.75,
        modalities: Collection[str] | None = None,
    ) -> None:
        if split not in SPLIT_OFFSETS:
            raise ValueError(f"split must be one of {list(SPLIT_OFFSETS)}, got '{split}'")
        self.num_samples = int(num_samples)
        self.split = split
        self.seed = int(seed)
        self.label_names = list(label_names)
        self.num_frames = int(num_frames)
        self.frame_size = int(frame_size)
        self.audio_length = int(round(audio_seconds * 16000))
        self.noise = float(noise)
        self.modalities = None if modalities is None else tuple(modalities)

    def __len__(self) -> int:
        return self.num_samples

    def sample_views(self) -> list[dict[str, Any]]:
        """Every sample (generated in memory; cheap), for a token budget check."""
        return [self[i] for i in range(self.num_samples)]

    #: Modalities generated as media (``load`` can leave them out); text and label always are.
    media_modalities = ("video", "image", "audio")

    def sample_id(self, index: int) -> str:
        """The id of sample ``index``, without generating it."""
        return f"{self.split}-{index:05d}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.load(index, self.modalities)

    def load(self, index: int, modalities: Collection[str] | None = None) -> dict[str, Any]:
        """Sample ``index``; only the media (video/image/audio) of ``modalities`` when given.

        Each modality draws from its own generator, seeded by (seed, split, index, modality), so a
        sample generated in part has exactly the values of the same parts of the whole sample.
        """
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        root = self.seed * 7_919 + SPLIT_OFFSETS[self.split] + index
        rng = np.random.default_rng(root)
        label = int(rng.integers(len(self.label_names)))
        noisy = rng.choice(["video", "image", "audio", "text"]) if rng.random() < self.noise else None
        sample: dict[str, Any] = {"id": self.sample_id(index)}
        for number, modality in enumerate(("video", "image", "audio", "text"), start=1):
            if modality == "text" or modalities is None or modality in modalities:
                make = getattr(self, f"_{modality}")
                sample[modality] = make(np.random.default_rng([root, number]), label, noisy == modality)
        sample["label"] = label
        return sample

    def _pattern(self, rng: np.random.Generator, label: int, phase: float) -> np.ndarray:
        size = self.frame_size
        frame = rng.integers(0, 90, (size, size, 3)).astype(np.float32)
        quarter = size // 2
        row, col = divmod(label % 4, 2)
        top, left = row * quarter, col * quarter
        shift = int(round(phase)) % quarter
        frame[top : top + quarter, left : left + quarter, label % 3] += 150.0
        frame[top + shift : top + shift + 2, left : left + quarter, :] = 255.0
        return frame.clip(0, 255).astype(np.uint8)

    def _video(self, rng: np.random.Generator, label: int, noisy: bool) -> np.ndarray:
        size = self.frame_size
        if noisy:
            return rng.integers(0, 256, (self.num_frames, size, size, 3), dtype=np.uint8)
        return np.stack([self._pattern(rng, label, 2.0 * t) for t in range(self.num_frames)])

    def _image(self, rng: np.random.Generator, label: int, noisy: bool) -> np.ndarray:
        if noisy:
            return rng.integers(0, 256, (self.frame_size, self.frame_size, 3), dtype=np.uint8)
        return self._pattern(rng, label, 0.0)

    def _audio(self, rng: np.random.Generator, label: int, noisy: bool) -> np.ndarray:
        time = np.arange(self.audio_length, dtype=np.float32) / 16000.0
        wave = 0.3 * rng.standard_normal(self.audio_length).astype(np.float32)
        if not noisy:
            freq = 300.0 * (label + 1) * (1.0 + 0.05 * rng.standard_normal())
            wave += 0.5 * np.sin(2 * math.pi * freq * time).astype(np.float32)
        return wave

    def _text(self, rng: np.random.Generator, label: int, noisy: bool) -> str:
        words = list(rng.choice(FILLERS, size=int(rng.integers(3, 8))))
        source = self.label_names[int(rng.integers(len(self.label_names)))] if noisy else self.label_names[label]
        pool = WORDS.get(source, [source])
        words.insert(int(rng.integers(len(words) + 1)), str(rng.choice(pool)))
        return " ".join(words)

"""Spoken digits: recorded human voices (Debian asterisk sounds) and espeak-ng voices, per split.

Speakers are held out: each recorded speaker belongs to one split (the five asterisk core voices,
en/es/fr/it/ru, in train; a Colombian Spanish speaker in val; a French and an Italian speaker in
test), and espeak voices use disjoint variant sets per split over the same five languages, so every
language is heard in training, from people and from espeak, but no val/test voice is. Waveforms come back float32, mono,
16 kHz, with leading and trailing silence trimmed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import av
import numpy as np
from scipy.signal import resample_poly

from mmtrain.data.demo.errors import DemoSourceError
from mmtrain.data.demo.spec import SOUNDS_DIR



@dataclass(frozen=True)
class Recording:
    """A recorded (human) voice: ``<sounds_dir>/<folder>/digits/<d>.<ext>``, from a Debian package."""

    speaker: str
    folder: str
    language: str
    package: str
    split: str
    ext: str = "wav"


# Held out by speaker: val and test speakers are never heard in train, but their languages are.
# (en_US_f_Allison and es_MX_f_Allison are the same person, both in train.)
RECORDINGS = (
    Recording("en_US_f_Allison", "en_US_f_Allison", "en", "asterisk-core-sounds-en-wav", "train"),
    Recording("es_MX_f_Allison", "es_MX_f_Allison", "es", "asterisk-core-sounds-es-wav", "train"),
    Recording("fr_CA_f_June", "fr_CA_f_June", "fr", "asterisk-core-sounds-fr-wav", "train"),
    Recording("it_IT_m_Carlo", "it_IT_m_Carlo", "it", "asterisk-core-sounds-it-wav", "train"),
    Recording("ru_RU_f_IvrvoiceRU", "ru_RU_f_IvrvoiceRU", "ru", "asterisk-core-sounds-ru-wav", "train"),
    Recording("es_CO_prompt", "es", "es", "asterisk-prompt-es-co", "val", "gsm"),
    Recording("fr_FR_f_Armelle", "fr", "fr", "asterisk-prompt-fr-armelle", "test", "gsm"),
    Recording("it_IT_f_Menardi", "it_IT_f_Menardi", "it", "asterisk-prompt-it-menardi-wav", "test"),
)
RECORDED_PACKAGES = tuple(r.package for r in RECORDINGS)
ESPEAK_LANGUAGES = ("en", "es", "fr", "it", "ru")
ESPEAK_VARIANTS = {
    "train": ("m1", "m2", "m4", "m5", "m7", "f1", "f2", "f4"),
    "val": ("m3", "f3"),
    "test": ("m6", "f5"),
}
ESPEAK_PACKAGE = "espeak-ng"
TELEPHONE_RATE = 8000  # the recordings' rate; espeak output is brought to the same band


@dataclass(frozen=True)
class Voice:
    """A speaker: ``id`` is ``asterisk/<folder>`` or ``espeak/<language>+<variant>``."""

    id: str
    kind: str  # "recorded" | "espeak"
    language: str

    @property
    def name(self) -> str:
        return self.id.split("/", 1)[1]


def voices_by_split() -> dict[str, dict[str, list[Voice]]]:
    """``{split: {"recorded": [...], "espeak": [...]}}`` (fixed, held out across splits)."""
    table: dict[str, dict[str, list[Voice]]] = {}
    for split, variants in ESPEAK_VARIANTS.items():
        recorded = [Voice(f"asterisk/{r.speaker}", "recorded", r.language) for r in RECORDINGS if r.split == split]
        synthetic = [Voice(f"espeak/{lang}+{variant}", "espeak", lang)
                     for lang in ESPEAK_LANGUAGES for variant in variants]
        table[split] = {"recorded": recorded, "espeak": synthetic}
    return table


def recording_path(sounds_dir: Path, speaker: str, digit: int) -> Path:
    record = next(r for r in RECORDINGS if r.speaker == speaker)
    return sounds_dir / record.folder / "digits" / f"{digit}.{record.ext}"


def check_recorded(sounds_dir: Path) -> None:
    """Every recorded voice must have its ten digit files; else name the Debian packages to install."""
    missing = [r for r in RECORDINGS
               if not all(recording_path(sounds_dir, r.speaker, d).is_file() for d in range(10))]
    if not missing:
        return
    packages = " ".join(r.package for r in missing)
    if len(missing) == len(RECORDINGS):
        head = f"no recorded voices found under {sounds_dir}"
    else:
        head = f"recorded voices missing under {sounds_dir}: {', '.join(r.speaker for r in missing)}"
    raise DemoSourceError(f"{head}: install the Debian packages {packages} (apt-get install {packages})")


def find_espeak(executable: str | None = None) -> str:
    """Path of the espeak-ng program, or an error naming the Debian package."""
    name = executable or "espeak-ng"
    path = shutil.which(name)
    if path is None:
        raise DemoSourceError(f"{name} not found on PATH: install the Debian package {ESPEAK_PACKAGE} "
                              f"(apt-get install {ESPEAK_PACKAGE})")
    return path


def check_variants(espeak: str, variants: set[str]) -> None:
    """espeak-ng silently falls back to the default voice for an unknown variant: check they exist."""
    listing = subprocess.run([espeak, "--voices=variant"], capture_output=True, text=True, check=False).stdout
    known = {line.split()[-1].rsplit("/", 1)[-1] for line in listing.splitlines()[1:] if line.split()}
    missing = sorted(variants - known)
    if missing:
        raise DemoSourceError(f"espeak-ng at {espeak} lacks the voice variants {missing}: install the Debian "
                              f"package espeak-ng-data (apt-get install {ESPEAK_PACKAGE} espeak-ng-data)")


def read_audio_file(path: Path) -> tuple[np.ndarray, int]:
    """Any mono/multi-channel audio file PyAV decodes (WAV, GSM, ...) -> (float32 mono, sample rate)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate = stream.rate
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(stream)
                  for out in resampler.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    if not chunks:
        raise ValueError(f"{path}: no audio")
    return np.concatenate(chunks).astype(np.float32), rate


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """float [-1, 1] mono -> 16-bit PCM WAV."""
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling to ``target`` Hz."""
    if rate == target:
        return samples.astype(np.float32)
    factor = gcd(rate, target)
    return resample_poly(samples, target // factor, rate // factor).astype(np.float32)


def trim_silence(samples: np.ndarray, rate: int, *, floor_db: float = -35.0, margin: float = 0.03) -> np.ndarray:
    """Cut leading/trailing parts whose 10 ms frames are ``floor_db`` below the loudest frame."""
    hop = max(1, rate // 100)
    count = len(samples) // hop
    if count == 0:
        return samples
    energy = np.sqrt((samples[: count * hop].reshape(count, hop) ** 2).mean(axis=1) + 1e-12)
    active = np.nonzero(20 * np.log10(energy / energy.max()) > floor_db)[0]
    pad = int(margin * rate)
    start = max(0, active[0] * hop - pad)
    stop = min(len(samples), (active[-1] + 1) * hop + pad)
    return samples[start:stop]


class VoiceBank:
    """Waveforms of (voice, digit), 16 kHz, trimmed; loaded or synthesised once, then cached."""

    def __init__(self, *, sounds_dir: Path = SOUNDS_DIR, espeak: str | None = None, rate: int = 16000) -> None:
        self.sounds_dir = Path(sounds_dir)
        check_recorded(self.sounds_dir)
        self.espeak = find_espeak(espeak)
        check_variants(self.espeak, {v for group in ESPEAK_VARIANTS.values() for v in group})
        self.rate = rate
        self._cache: dict[tuple[str, int], np.ndarray] = {}

    def prefetch(self, keys: set[tuple[Voice, int]], workers: int = 4) -> None:
        """Load all ``(voice, digit)`` waveforms not cached yet (espeak runs in parallel)."""
        todo = sorted((k for k in keys if (k[0].id, k[1]) not in self._cache), key=lambda k: (k[0].id, k[1]))
        with tempfile.TemporaryDirectory(prefix="mmtrain-espeak-") as scratch, ThreadPoolExecutor(workers) as pool:
            waves = list(pool.map(lambda key: self._load(key[0], key[1], Path(scratch)), todo))
        for (voice, digit), samples in zip(todo, waves):
            self._cache[(voice.id, digit)] = samples

    def get(self, voice: Voice, digit: int) -> np.ndarray:
        key = (voice.id, digit)
        if key not in self._cache:
            self.prefetch({(voice, digit)}, workers=1)
        return self._cache[key]

    def _load(self, voice: Voice, digit: int, scratch: Path) -> np.ndarray:
        if voice.kind == "recorded":
            samples, rate = read_audio_file(recording_path(self.sounds_dir, voice.name, digit))
        else:
            out = scratch / f"{voice.name}_{digit}.wav"
            result = subprocess.run([self.espeak, "-v", voice.name, "-w", str(out), str(digit)],
                                    capture_output=True, text=True, check=False)
            if result.returncode != 0 or not out.is_file():
                raise DemoSourceError(f"espeak-ng could not speak with voice {voice.name!r}: "
                                      f"{result.stderr.strip() or 'no output'} (Debian package {ESPEAK_PACKAGE})")
            samples, rate = read_audio_file(out)
        if rate > TELEPHONE_RATE:  # band-limit espeak like the 8 kHz recordings: no cue above 4 kHz
            samples, rate = resample(samples, rate, TELEPHONE_RATE), TELEPHONE_RATE
        samples = trim_silence(resample(samples, rate, self.rate), self.rate)
        peak = float(np.abs(samples).max())
        if peak < 1e-4:
            raise ValueError(f"voice {voice.id} digit {digit} is silent")
        return (samples / peak).astype(np.float32)


def speech_segment(samples: np.ndarray, rng: np.random.Generator, *, length: int, rate: int) -> np.ndarray:
    """One spoken digit placed in a ``length``-sample segment: speed x0.9-1.1, squeezed to fit 90% of
    the segment, random start, peak gain 0.3-0.8. float32 [length]."""
    speed = float(rng.uniform(0.9, 1.1))
    longest = int(0.9 * length)
    if len(samples) / speed > longest:
        speed = len(samples) / longest
    if abs(speed - 1.0) > 1e-3:
        up = 1000
        samples = resample_poly(samples, up, int(round(up * speed))).astype(np.float32)
    samples = samples[:longest]
    gain = float(rng.uniform(0.3, 0.8)) / max(float(np.abs(samples).max()), 1e-6)
    start_min, start_max = int(0.03 * rate), max(int(0.03 * rate), length - len(samples) - int(0.02 * rate))
    start = int(rng.integers(start_min, start_max + 1))
    start = min(start, length - len(samples))
    out = np.zeros(length, np.float32)
    out[start : start + len(samples)] = samples * gain
    return out

"""``MultimodalProcessor``: raw samples -> the batch ``MultimodalModel`` takes (and back to labels)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, ProcessorMixin, WhisperFeatureExtractor

from mmtrain.config.plain import plain
from mmtrain.data.cached_features import CACHED_KEY, CachedMedia, gather_cached
from mmtrain.data.skips import SkippedSample
from mmtrain.data.transforms import CLIP_MEAN, CLIP_STD, pil_to_frames, to_float_frames, uniform_indices
from mmtrain.data.visual import check_augment, visual_transform
from mmtrain.components.paths import resolve_pretrained_path

MODALITIES = ("video", "image", "audio", "text")
#: Batch entries that describe the samples rather than feed the model. (``cached_features``, the
#: frozen-encoder outputs read before decoding, is a model input: see :mod:`mmtrain.models.feature_cache`.)
BOOKKEEPING_KEYS = ("ids", "skipped", "item_ids", "item_scores", "target_texts", "aux_labels")
SAMPLING_RATE = 16000
HOP_LENGTH = 160


class MultimodalProcessor(ProcessorMixin):
    """Turns raw samples (see DESIGN.md) into a padded batch with masks.

    Produces, for the modalities in ``modalities``: ``pixel_values_videos`` [B,T,3,S,S] with
    ``video_attention_mask`` [B,T]; ``pixel_values`` [B,3,S,S]; ``input_features`` [B,F,audio_frames]
    (log-mel) with ``audio_attention_mask`` [B,audio_frames], or ``input_values`` [B,L] (waveform)
    with ``audio_attention_mask`` [B,L]; ``input_ids``/``attention_mask`` [B,L]; ``<m>_present``
    [B] bool; ``labels`` [B] when every sample has one.

    A modality whose value is a list of K items in every sample that has it (pairs: K=2) gets an
    item axis: each tensor above becomes [B,K,...] (e.g. ``pixel_values`` [B,K,3,S,S], ``input_ids``
    [B,K,L]); ``<m>_present`` stays [B]. Samples may carry ``item_ids`` (K str) and ``item_scores``
    (K float, NaN when unknown), passed on as ``batch["item_ids"]`` (list of B tuples) and
    ``batch["item_scores"]`` float [B,K].
    """

    def __init__(
        self,
        tokenizer: Any,
        feature_extractor: Any,
        # Not keyword-only: ProcessorMixin.from_pretrained passes only positional-or-keyword args.
        modalities: Sequence[str] = MODALITIES,
        image_size: int = 32,
        num_frames: int = 4,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        audio_format: str = "log_mel",
        max_text_length: int = 64,
        augment: dict[str, Any] | None = None,
        modality_dropout: dict[str, float] | None = None,
        prompt: dict[str, Any] | None = None,
    ) -> None:
        unknown = sorted(set(modalities) - set(MODALITIES))
        if unknown:
            raise ValueError(f"processor modalities {unknown} unknown; choose from {list(MODALITIES)}")
        if audio_format not in ("log_mel", "waveform"):
            raise ValueError(f"audio_format must be 'log_mel' or 'waveform', got '{audio_format}'")
        self.modalities = list(modalities)
        self.image_size = int(image_size)
        self.num_frames = int(num_frames)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.audio_format = audio_format
        self.max_text_length = int(max_text_length)
        self.augment = check_augment(augment)
        self.modality_dropout = _check_dropout(modality_dropout, self.modalities)
        super().__init__(tokenizer, feature_extractor, *self._more_attributes())
        self.prompt = dict(plain(prompt)) if prompt else None
        self.prompt_builder = self._prompt_builder(self.prompt)

    def _more_attributes(self) -> tuple[Any, ...]:
        """Sub-processors beyond the tokenizer and feature extractor (a subclass's), in ``__init__`` order."""
        return ()

    @property
    def encoder_tokenizer(self) -> Any:
        """The tokenizer of the text encoder slot's ``input_ids`` (here the one tokenizer)."""
        return self.tokenizer

    def _prompt_builder(self, prompt: dict[str, Any] | None) -> Any:
        """The LM prompt builder (LLM-decoder models), or ``None``; adds its tokens to the tokenizer."""
        if not prompt:
            return None
        from mmtrain.components.lm.prompt import MEDIA, PromptBuilder

        options = dict(prompt)
        num_tokens = int(options.pop("num_tokens", 1))
        media = {m: num_tokens for m in self.modalities if m in MEDIA}
        try:
            return PromptBuilder(self.tokenizer, media_tokens=media, **options)
        except TypeError as err:
            raise ValueError(f"data.processor.prompt: {err}") from err

    def model_facts(self) -> dict[str, Any]:
        """What an LLM-decoder model must know of the prompt tokenizer ({} without a prompt)."""
        if self.prompt_builder is None:
            return {}
        facts = {"lm_vocab_size": len(self.tokenizer), "media_token_ids": self.prompt_builder.media_token_ids,
                 "class_token_id": self.prompt_builder.class_token_id}
        answers = self.prompt_builder.answer_token_ids
        return facts if answers is None else {**facts, "answer_token_ids": answers}

    @property
    def audio_frames(self) -> int:
        """Log-mel frames per sample (fixed window)."""
        return int(self.feature_extractor.nb_max_frames)

    def __call__(self, samples: list[dict[str, Any]] | None = None, **modal: Any) -> dict[str, Any]:
        """Collate raw samples, or keyword lists ``videos=``, ``images=``, ``audio=``, ``text=``."""
        if samples is None:
            samples = _samples_from_keywords(modal)
        return self.collate(samples)

    def collate_train(self, samples: list[dict[str, Any] | SkippedSample]) -> dict[str, Any]:
        """:meth:`collate` with train-time augmentation and modality dropout."""
        return self.collate(samples, train=True)

    def collate(self, samples: list[dict[str, Any] | SkippedSample], train: bool = False) -> dict[str, Any]:
        """Batch raw samples; ``labels`` when every sample has a float ``target`` (regression: float
        [B, K]) or else an int ``label`` (long [B]).

        With ``train=True``, images and frames are augmented (``augment``) and each sample drops
        each modality with its ``modality_dropout`` probability (never all of a sample's modalities);
        a dropped modality is absent (``<m>_present`` false), as if the sample lacked it.

        :class:`SkippedSample` entries (media that failed to decode) are left out of the tensors
        and listed as ``batch["skipped"]`` (records); a batch whose samples were all skipped has
        ``ids == []`` and no tensors.

        Feature cache (:mod:`mmtrain.data.cached_features`): a sample's :class:`CachedMedia` counts as
        present but is not preprocessed (a zero row; no tensors when every sample's is served), and
        the samples' cached entries go on as ``batch["cached_features"]`` (a ``CachedBatch``).
        """
        skipped = [s.to_record() for s in samples if isinstance(s, SkippedSample)]
        samples = [s for s in samples if not isinstance(s, SkippedSample)]
        batch: dict[str, Any] = {"ids": [str(s.get("id", i)) for i, s in enumerate(samples)], "skipped": skipped}
        if not samples:
            return batch
        if train and self.modality_dropout:
            samples = [self._drop_modalities(s) for s in samples]
        for modality in self.modalities:
            batch.update(self._collate_items(modality, samples, train))
            batch[f"{modality}_present"] = torch.tensor(
                [s.get(modality) is not None for s in samples], dtype=torch.bool
            )
        cached = gather_cached(samples, self.modalities)
        if cached is not None:
            batch[CACHED_KEY] = cached
        labels = [s.get("label") for s in samples]
        targets = [s.get("target") for s in samples]
        if all(target is not None for target in targets):  # regression: float targets [B, K]
            batch["labels"] = torch.tensor(targets, dtype=torch.float32).reshape(len(samples), -1)
            batch.update(aux_labels(samples))
        elif all(isinstance(label, (int, np.integer)) for label in labels):
            batch["labels"] = torch.tensor([int(label) for label in labels], dtype=torch.long)
        if self.prompt_builder is not None:
            batch.update(self.prompt_builder(samples))
        batch.update(item_bookkeeping(samples))
        return batch

    def _collate_items(self, modality: str, samples: list[dict[str, Any]], train: bool) -> dict[str, torch.Tensor]:
        """The modality's tensors [B,...], or [B,K,...] when samples hold lists of K items.

        Lists are flattened to B*K virtual samples (a sample without the modality gives K absent
        items), collated by ``_collate_<modality>`` and reshaped, so every modality takes lists.
        """
        collate = getattr(self, f"_collate_{modality}")
        given = [s.get(modality) for s in samples]
        served = [isinstance(g, CachedMedia) for g in given]
        if any(served):  # features read from the cache: nothing to preprocess
            if all(served):
                return {}
            samples = [{**s, modality: None} if cached else s for s, cached in zip(samples, served)]
            given = [None if cached else g for g, cached in zip(given, served)]
        counts = {len(g) for g in given if isinstance(g, (list, tuple))}
        if not counts:
            return collate(samples, train)
        singles = sum(g is not None and not isinstance(g, (list, tuple)) for g in given)
        if len(counts) > 1 or singles:
            raise ValueError(
                f"samples in a batch mix {modality} lists of lengths {sorted(counts)} and {singles} single "
                f"{modality} value(s); every sample needs the same number of {modality} items."
            )
        k = counts.pop()
        if k < 1:
            raise ValueError(f"a sample has an empty {modality} list; give at least one item.")
        flat = [{modality: g[j] if g is not None else None} for g in given for j in range(k)]
        return {key: value.reshape(len(samples), k, *value.shape[1:]) for key, value in collate(flat, train).items()}

    def _drop_modalities(self, sample: dict[str, Any]) -> dict[str, Any]:
        have = [m for m in self.modalities if sample.get(m) is not None]
        drop = [m for m in have if float(torch.rand(())) < self.modality_dropout.get(m, 0.0)]
        if len(drop) == len(have) and drop:  # never drop everything: keep one, chosen at random
            drop.pop(int(torch.randint(len(drop), ())))
        if not drop:
            return sample
        return {k: v for k, v in sample.items() if k not in drop}

    def _visual(self, frames: torch.Tensor, train: bool) -> torch.Tensor:
        return visual_transform(
            frames, size=self.image_size, mean=self.image_mean, std=self.image_std,
            augment=self.augment if train else None,
        )

    def _frames(self, frames: Any, train: bool) -> torch.Tensor:
        tensor = to_float_frames(frames)
        if tensor.shape[0] != self.num_frames:
            tensor = tensor[uniform_indices(tensor.shape[0], self.num_frames)]
        return self._visual(tensor, train)

    def _collate_video(self, samples: list[dict[str, Any]], train: bool) -> dict[str, torch.Tensor]:
        shape = (self.num_frames, 3, self.image_size, self.image_size)
        clips = [self._frames(s["video"], train) if s.get("video") is not None else torch.zeros(shape) for s in samples]
        return {
            "pixel_values_videos": torch.stack(clips),
            "video_attention_mask": torch.ones(len(samples), self.num_frames, dtype=torch.long),
        }

    def _image(self, image: Any, train: bool) -> torch.Tensor:
        frames = pil_to_frames(image) if hasattr(image, "convert") else to_float_frames(image)
        return self._visual(frames, train)[0]

    def _collate_image(self, samples: list[dict[str, Any]], train: bool) -> dict[str, torch.Tensor]:
        """``pixel_values`` [B,3,S,S] (lists of K images: see :meth:`_collate_items`)."""
        given = [s.get("image") for s in samples]
        shape = (3, self.image_size, self.image_size)
        return {"pixel_values": torch.stack([self._image(g, train) if g is not None else torch.zeros(shape) for g in given])}

    def _collate_audio(self, samples: list[dict[str, Any]], train: bool) -> dict[str, torch.Tensor]:
        waves = [
            np.asarray(s["audio"], dtype=np.float32) if s.get("audio") is not None else np.zeros(HOP_LENGTH, np.float32)
            for s in samples
        ]
        if self.audio_format == "waveform":
            return _pad_waveforms(waves)
        features = self.feature_extractor(
            waves, sampling_rate=SAMPLING_RATE, return_tensors="pt", return_attention_mask=True
        )
        return {
            "input_features": features["input_features"],
            "audio_attention_mask": features["attention_mask"].long(),
        }

    def _collate_text(self, samples: list[dict[str, Any]], train: bool) -> dict[str, torch.Tensor]:
        texts = [str(s.get("text") or "") for s in samples]
        encoded = self.encoder_tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_text_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def decode_labels(self, logits: torch.Tensor, id2label: dict[int, str]) -> list[str]:
        """Arg-max class names for ``logits`` [B, C]."""
        return [id2label[int(i)] for i in logits.argmax(dim=-1)]


def aux_labels(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``aux_labels``: modality -> float ``[B, 1]`` of the samples' per-modality targets (``aux_targets``, e.g.
    CH-SIMS's ``label_T``), for the modalities every sample has one of; ``{}`` when none."""
    given = [s.get("aux_targets") or {} for s in samples]
    shared = [m for m in given[0] if all(m in g for g in given)]
    if not shared:
        return {}
    return {"aux_labels": {m: torch.tensor([[float(g[m])] for g in given], dtype=torch.float32) for m in shared}}


def item_bookkeeping(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``item_ids`` (list of tuples; when every sample has them) and ``item_scores`` [B,K] (NaN = unknown)."""
    out: dict[str, Any] = {}
    if all(s.get("item_ids") is not None for s in samples):
        out["item_ids"] = [tuple(str(i) for i in s["item_ids"]) for s in samples]
    given = [s.get("item_scores") for s in samples]
    if any(g is not None for g in given):
        k = max(len(g) for g in given if g is not None)
        rows = [[math.nan] * k if g is None else [math.nan if v is None else float(v) for v in g] for g in given]
        if any(len(row) != k for row in rows):
            raise ValueError(f"samples in a batch have item_scores of different lengths {sorted({len(r) for r in rows})}.")
        out["item_scores"] = torch.tensor(rows, dtype=torch.float32)
    return out


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The entries of a collated batch that the model takes (``labels`` and ``cached_features`` included)."""
    return {k: v for k, v in batch.items() if k not in BOOKKEEPING_KEYS}


def _check_dropout(dropout: dict[str, float] | None, modalities: Sequence[str]) -> dict[str, float]:
    """Dropout per modality of this model; entries for known modalities the model lacks are unused."""
    result = {}
    for modality, p in (dropout or {}).items():
        if modality not in MODALITIES:
            raise ValueError(f"data.processor.modality_dropout.{modality}: not a modality; use {list(MODALITIES)}")
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"data.processor.modality_dropout.{modality} must be in [0, 1), got {p}")
        if modality in modalities:
            result[str(modality)] = float(p)
    return result


def _pad_waveforms(waves: list[np.ndarray]) -> dict[str, torch.Tensor]:
    """Zero-mean unit-variance waveforms padded to the longest: ``input_values`` [B,L] + mask."""
    longest = max(len(w) for w in waves)
    values = torch.zeros(len(waves), longest)
    mask = torch.zeros(len(waves), longest, dtype=torch.long)
    for row, wave in enumerate(waves):
        tensor = torch.from_numpy(wave)
        tensor = (tensor - tensor.mean()) / (tensor.std(unbiased=False) + 1e-7)
        values[row, : len(wave)] = tensor
        mask[row, : len(wave)] = 1
    return {"input_values": values, "audio_attention_mask": mask}


def _samples_from_keywords(modal: dict[str, Any]) -> list[dict[str, Any]]:
    names = {"videos": "video", "images": "image", "audio": "audio", "text": "text"}
    unknown = sorted(set(modal) - set(names))
    if unknown:
        raise TypeError(f"unexpected processor inputs {unknown}; use {sorted(names)}")
    lengths = {len(v) for v in modal.values()}
    if len(lengths) != 1:
        raise ValueError(f"processor inputs must have the same length, got { {k: len(v) for k, v in modal.items()} }")
    count = lengths.pop()
    return [{names[k]: v[i] for k, v in modal.items()} | {"id": str(i)} for i in range(count)]


def build_processor(
    *,
    tokenizer: str,
    modalities: Sequence[str] = MODALITIES,
    image_size: int = 32,
    image_mean: Sequence[float] = CLIP_MEAN,
    image_std: Sequence[float] = CLIP_STD,
    num_frames: int = 4,
    num_mel_bins: int = 80,
    audio_frames: int = 100,
    audio_format: str = "log_mel",
    max_text_length: int = 64,
    augment: dict[str, Any] | None = None,
    modality_dropout: dict[str, float] | None = None,
    prompt: dict[str, Any] | None = None,
    text_tokenizer: str | None = None,
) -> MultimodalProcessor:
    """Build the processor from config values (a tokenizer folder, Hub id or ``pkg:<module>``).

    ``image_size`` / ``image_mean`` / ``image_std`` (RGB, of pixels in [0, 1]) and ``num_mel_bins`` /
    ``audio_frames`` follow a pretrained tower's checkpoint when one is configured
    (:mod:`mmtrain.engine.checkpoint_settings`).

    ``audio_frames`` is the fixed log-mel window: a multiple of 100 (whole seconds at 16 kHz, hop 160).
    ``prompt`` (LLM-decoder models): ``{template, num_tokens, class_token, max_length, overflow}``
    for :class:`mmtrain.components.lm.prompt.PromptBuilder`; ``num_tokens`` pseudo-tokens per media modality.
    ``text_tokenizer``: the text encoder slot's own tokenizer (folder, Hub id or ``pkg:``) when it is not
    ``tokenizer`` (an LLM-decoder model whose prompt is in the LM's vocabulary and whose text tower, e.g.
    MiniLM, has another): a :class:`~mmtrain.models.text_tower_processor.TextTowerProcessor`.
    """
    if audio_frames <= 0 or audio_frames % 100:
        raise ValueError(f"data.processor.audio_frames must be a positive multiple of 100, got {audio_frames}")
    folder = resolve_pretrained_path(tokenizer, what="data.processor.tokenizer")
    extractor = WhisperFeatureExtractor(
        feature_size=num_mel_bins, sampling_rate=SAMPLING_RATE, hop_length=HOP_LENGTH,
        chunk_length=audio_frames // 100,
    )
    parts: list[Any] = [AutoTokenizer.from_pretrained(str(folder)), extractor]
    cls: type[MultimodalProcessor] = MultimodalProcessor
    if text_tokenizer:
        from mmtrain.models.text_tower_processor import TextTowerProcessor

        text_folder = resolve_pretrained_path(text_tokenizer, what="data.processor.text_tokenizer")
        parts.append(AutoTokenizer.from_pretrained(str(text_folder)))
        cls = TextTowerProcessor
    return cls(
        *parts, modalities=list(modalities),
        image_size=image_size, image_mean=list(image_mean), image_std=list(image_std), num_frames=num_frames,
        audio_format=audio_format,
        max_text_length=max_text_length, augment=plain(augment), modality_dropout=plain(modality_dropout),
        prompt=plain(prompt),
    )


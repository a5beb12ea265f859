"""``TextTowerProcessor``: a processor with two tokenizers, the LM prompt's and the text encoder slot's.

An LLM-decoder model writes its prompt in the LM's vocabulary (``tokenizer``, with the marker tokens
added), while a text encoder slot beside it (e.g. the frozen MiniLM of an align-then-generate model)
reads ``input_ids`` of its own vocabulary (``text_tokenizer``). ``save_pretrained`` writes the second
one to the ``text_tokenizer/`` subfolder (transformers' layout for a processor's additional
tokenizers) and ``from_pretrained`` reads it back from there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mmtrain.data.transforms import CLIP_MEAN, CLIP_STD
from mmtrain.models.processing import MODALITIES, MultimodalProcessor


class TextTowerProcessor(MultimodalProcessor):
    """:class:`MultimodalProcessor` whose text modality (``input_ids`` / ``attention_mask``) is tokenized by
    ``text_tokenizer``; ``tokenizer`` writes the LM prompt (``lm_input_ids``...). Arguments as the base's."""

    def __init__(
        self,
        tokenizer: Any,
        feature_extractor: Any,
        text_tokenizer: Any,
        # transformers saves the __init__ parameters it finds in the signature: every one is spelled out.
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
        self.text_tokenizer = text_tokenizer
        super().__init__(tokenizer, feature_extractor, modalities, image_size, num_frames, image_mean, image_std,
                         audio_format, max_text_length, augment, modality_dropout, prompt)

    def _more_attributes(self) -> tuple[Any, ...]:
        return (self.text_tokenizer,)

    @property
    def encoder_tokenizer(self) -> Any:
        return self.text_tokenizer

"""``PromptBuilder``: raw samples -> LM token ids with marker tokens and media placeholders.

A template such as ``"<VIDEO>{video}</VIDEO><AUDIO>{audio}</AUDIO> {text} Emotion:<EMO>"`` is
filled per sample: ``{<modality>}`` becomes ``num_tokens`` copies of that modality's placeholder
token (``<VIDEO_PAD>``...) when the sample has the modality (the marker pair around it stays, as
written in the template), nothing otherwise; ``{text}`` becomes the sample's text. The LLM model
writes the projected encoder features at the placeholder positions of ``inputs_embeds``.

Marker, placeholder and class tokens are added to the tokenizer as special tokens, in a fixed
order, so a tokenizer built the same way always gives them the same ids.

Token budget: a prompt longer than ``max_length`` is refused with the sample ids and lengths
(``overflow="error"``), or its text is shortened (``overflow="truncate_text"``); media tokens are
never cut.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

MEDIA = ("video", "audio", "image")
OVERFLOW = ("error", "truncate_text")


def placeholder(modality: str) -> str:
    """Placeholder token of a modality's pseudo-tokens (``<VIDEO_PAD>``)."""
    return f"<{modality.upper()}_PAD>"


class PromptBuilder:
    """Builds ``lm_input_ids`` / ``lm_attention_mask`` [B, L] from raw samples.

    Args:
        tokenizer: a Hugging Face tokenizer; marker tokens are added to it.
        template: the prompt with ``{video}``, ``{audio}``, ``{image}`` and ``{text}`` fields.
        media_tokens: modality -> pseudo-tokens per sample (the projector's ``num_tokens``).
        class_token: token whose final hidden state is classified (e.g. ``<EMO>``), or ``None``.
        markers: extra tokens to add (default: ``<VIDEO>``/``</VIDEO>``... for the template's modalities
            and ``<TEXT>``/``</TEXT>`` when the template writes them).
        max_length: token budget of a prompt.
        overflow: ``error`` or ``truncate_text`` (see the module docstring).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        template: str,
        media_tokens: Mapping[str, int],
        class_token: str | None = None,
        markers: Sequence[str] | None = None,
        max_length: int = 256,
        overflow: str = "error",
    ) -> None:
        fields = set(re.findall(r"\{(\w+)\}", template))
        unknown = sorted(fields - {*MEDIA, "text"})
        if unknown:
            raise ValueError(f"prompt template fields {unknown} are unknown; use {{video}}, {{audio}}, {{image}}, {{text}}.")
        missing = sorted(m for m in media_tokens if m not in fields)
        if missing:
            raise ValueError(f"prompt template has no {{{missing[0]}}} field for the model's {missing} features.")
        if class_token is not None and class_token not in template:
            raise ValueError(f"prompt template does not contain the class token {class_token!r}.")
        if overflow not in OVERFLOW:
            raise ValueError(f"prompt overflow must be one of {list(OVERFLOW)}, got {overflow!r}")
        self.tokenizer = tokenizer
        self.template = template
        self.media_tokens = {m: int(n) for m, n in media_tokens.items()}
        self.class_token = class_token
        self.max_length = int(max_length)
        self.overflow = overflow
        written = re.findall(r"</?[A-Z]+>", template)
        extra = list(dict.fromkeys([*(markers or []), *written, *(placeholder(m) for m in self.media_tokens),
                                    *([class_token] if class_token else [])]))
        tokenizer.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
        if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token
        self.special_tokens = extra

    @property
    def media_token_ids(self) -> dict[str, int]:
        return {m: int(self.tokenizer.convert_tokens_to_ids(placeholder(m))) for m in self.media_tokens}

    @property
    def class_token_id(self) -> int | None:
        return None if self.class_token is None else int(self.tokenizer.convert_tokens_to_ids(self.class_token))

    def render(self, sample: Mapping[str, Any], text: str | None = None) -> str:
        """The prompt of one sample (``text`` replaces the sample's own text, e.g. shortened)."""
        values = {m: placeholder(m) * self.media_tokens[m] if sample.get(m) is not None else ""
                  for m in self.media_tokens}
        values["text"] = str(sample.get("text") or "") if text is None else text
        return re.sub(r"\{(\w+)\}", lambda match: values.get(match.group(1), ""), self.template)

    def _ids(self, sample: Mapping[str, Any]) -> list[int]:
        ids = self.tokenizer(self.render(sample), add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_length:
            return ids
        if self.overflow == "truncate_text":
            text_ids = self.tokenizer(str(sample.get("text") or ""), add_special_tokens=False)["input_ids"]
            keep = len(text_ids) - (len(ids) - self.max_length)
            if keep >= 0:
                shorter = self.tokenizer.decode(text_ids[:keep])
                ids = self.tokenizer(self.render(sample, shorter), add_special_tokens=False)["input_ids"]
                if len(ids) <= self.max_length:
                    return ids
        raise ValueError(
            f"sample {sample.get('id')!r}: the prompt takes {len(ids)} tokens, over the budget of "
            f"{self.max_length} (data.processor prompt max_length); media tokens are never cut. "
            "Raise the budget, shorten the template, or set overflow: truncate_text."
        )

    def lengths(self, samples: Sequence[Mapping[str, Any]]) -> list[int]:
        """Prompt length of each sample (before any truncation), for a budget report."""
        return [len(self.tokenizer(self.render(s), add_special_tokens=False)["input_ids"]) for s in samples]

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """``lm_input_ids`` / ``lm_attention_mask`` [B, L], right-padded with the pad token."""
        rows = [self._ids(s) for s in samples]
        longest = max(len(r) for r in rows)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return {"lm_input_ids": ids, "lm_attention_mask": mask}

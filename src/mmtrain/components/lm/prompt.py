"""``PromptBuilder``: raw samples -> LM token ids with marker tokens and media placeholders.

A template such as ``"<VIDEO>{video}</VIDEO><AUDIO>{audio}</AUDIO> {text} Emotion:<EMO>"`` is
filled per sample: ``{<modality>}`` becomes ``num_tokens`` copies of that modality's placeholder
token (``<VIDEO_PAD>``...) when the sample has the modality (the marker pair around it stays, as
written in the template), nothing otherwise; ``{text}`` becomes the sample's text. The LLM model
writes the projected encoder features at the placeholder positions of ``inputs_embeds``.

Several items of a modality in one prompt (two images to compare): numbered fields ``{image_1}``,
``{image_2}``... each take one item of the sample's list, in order (the model writes item ``i``'s
pseudo-tokens at the ``i``-th block). A sample must hold exactly as many items as the template has
numbered fields; more or fewer is refused naming the sample.

Classification at the answer token (``label_answers``: the class names): the LM's own logits, at the
last prompt position (or at the class token), of the first token of each class name as an answer
(``answer_prefix`` + name) are the class logits, so no new head is needed and the LM answers in words
(the seeds' First / Second / Similar). :attr:`PromptBuilder.answer_token_ids` gives those ids; they
must differ.

Marker, placeholder and class tokens are added to the tokenizer as special tokens, in a fixed
order, so a tokenizer built the same way always gives them the same ids.

Instruction tuning: a sample with a ``target_text`` (the answer) gets it appended after the
prompt (``answer_prefix`` first, the tokenizer's eos last); ``lm_labels`` hold the answer's ids and
-100 on the prompt (markers, media placeholders, text) and on padding, so the LM loss is the
answer's alone. The prompt alone is also given left-padded (``lm_prompt_ids``) for generation.

Token budget: a sequence (prompt + answer) longer than ``max_length`` is refused with the sample
ids and lengths (``overflow="error"``), or its text is shortened (``overflow="truncate_text"``);
media tokens and the answer are never cut.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

MEDIA = ("video", "audio", "image")
OVERFLOW = ("error", "truncate_text")
#: A template field: ``{text}``, ``{<modality>}`` or a numbered ``{<modality>_<n>}`` (n >= 1).
FIELD = re.compile(r"\{([a-z]+)(?:_(\d+))?\}")


def template_slots(template: str) -> dict[str, int]:
    """Media modality -> numbered fields of the template (``{image_1}``, ``{image_2}`` -> 2; a plain
    ``{image}`` -> 0), every field checked.

    Raises:
        ValueError: an unknown field, a modality both plain and numbered, or numbered fields that are not
            ``1..N`` in the order they appear.
    """
    numbers: dict[str, list[int]] = {}
    for name, number in FIELD.findall(template):
        if name not in (*MEDIA, "text") or (name == "text" and number):
            raise ValueError(f"prompt template field {{{name}{'_' + number if number else ''}}} is unknown; use "
                             "{video}, {audio}, {image} (or numbered {image_1}, {image_2}...) and {text}.")
        if name != "text":
            numbers.setdefault(name, []).append(int(number) if number else 0)
    unmatched = sorted(set(re.findall(r"\{(\w*)\}", template)) - {m.group(0)[1:-1] for m in FIELD.finditer(template)})
    if unmatched:
        raise ValueError(f"prompt template fields {unmatched} are unknown; use {{video}}, {{audio}}, {{image}}, "
                         "{image_1}..., {text}.")
    slots = {}
    for name, found in numbers.items():
        if found == [0]:
            slots[name] = 0
        elif 0 in found:
            raise ValueError(f"prompt template mixes {{{name}}} with numbered {{{name}_<n>}} fields; use one form.")
        elif found != list(range(1, len(found) + 1)):
            raise ValueError(f"prompt template's numbered {name} fields appear as {found}; write "
                             f"{{{name}_1}}..{{{name}_{len(found)}}} once each, in that order.")
        else:
            slots[name] = len(found)
    return slots


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
        answer_prefix: written between the prompt and a sample's ``target_text`` (GPT-2 style BPE
            expects the leading space of a word: ``" seven"``).
        markers: extra tokens to add (default: ``<VIDEO>``/``</VIDEO>``... for the template's modalities
            and ``<TEXT>``/``</TEXT>`` when the template writes them).
        max_length: token budget of a prompt.
        overflow: ``error`` or ``truncate_text`` (see the module docstring).
        label_answers: class names, for classification at the answer token (see the module docstring).
        source_templates: per train source of a mixture (a sample's ``source``, which
            :class:`~mmtrain.data.mixture.MixtureDataset` sets), the template its samples use instead of
            ``template``; each is checked as ``template`` is.
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
        answer_prefix: str = " ",
        label_answers: Sequence[str] | None = None,
        source_templates: Mapping[str, str] | None = None,
    ) -> None:
        #: source name (``None``: the default) -> (template, its slots)
        self.templates: dict[str | None, tuple[str, dict[str, int]]] = {}
        for source, text in [(None, template), *dict(source_templates or {}).items()]:
            where = "prompt template" if source is None else f"prompt source_templates.{source}"
            slots = template_slots(text)
            missing = sorted(m for m in media_tokens if m not in slots)
            if missing:
                raise ValueError(f"{where} has no {{{missing[0]}}} field for the model's {missing} features.")
            if class_token is not None and class_token not in text:
                raise ValueError(f"{where} does not contain the class token {class_token!r}.")
            self.templates[source] = (str(text), slots)
        if overflow not in OVERFLOW:
            raise ValueError(f"prompt overflow must be one of {list(OVERFLOW)}, got {overflow!r}")
        self.tokenizer = tokenizer
        self.media_tokens = {m: int(n) for m, n in media_tokens.items()}
        self.class_token = class_token
        self.max_length = int(max_length)
        self.overflow = overflow
        self.answer_prefix = str(answer_prefix)
        written = [m for text, _ in self.templates.values() for m in re.findall(r"</?[A-Z]+>", text)]
        extra = list(dict.fromkeys([*(markers or []), *written, *(placeholder(m) for m in self.media_tokens),
                                    *([class_token] if class_token else [])]))
        tokenizer.add_special_tokens({"additional_special_tokens": extra}, replace_extra_special_tokens=False)
        if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; padding is masked anyway
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.eos_token_id is None:  # BERT-style: [SEP] ends an answer
            tokenizer.eos_token = tokenizer.sep_token or tokenizer.pad_token
        self.special_tokens = extra
        self.label_answers = [str(n) for n in label_answers] if label_answers else None
        if self.label_answers:
            self.answer_token_ids  # refuses names whose answers start with the same token

    @property
    def slots(self) -> dict[str, int]:
        """Media modality -> numbered fields of the default template (what a single-sample predict must match)."""
        return self.templates[None][1]

    @property
    def answer_token_ids(self) -> list[int] | None:
        """First token of each ``label_answers`` name written as an answer (``None`` without them).

        Raises:
            ValueError: two names start with the same token (the LM could not tell them apart).
        """
        return first_answer_tokens(self.tokenizer, self.answer_prefix, self.label_answers)

    @property
    def media_token_ids(self) -> dict[str, int]:
        return {m: int(self.tokenizer.convert_tokens_to_ids(placeholder(m))) for m in self.media_tokens}

    @property
    def class_token_id(self) -> int | None:
        return None if self.class_token is None else int(self.tokenizer.convert_tokens_to_ids(self.class_token))

    def render(self, sample: Mapping[str, Any], text: str | None = None) -> str:
        """The prompt of one sample (``text`` replaces the sample's own text, e.g. shortened), from its source's
        template when it has one."""
        template, slots = self.templates.get(sample.get("source"), self.templates[None])
        values = {m: placeholder(m) * self.media_tokens[m] if sample.get(m) is not None else ""
                  for m in self.media_tokens}
        for m, count in slots.items():
            given = sample.get(m)
            if count and m in self.media_tokens and given is not None:
                items = len(given) if isinstance(given, (list, tuple)) else 1
                if items != count:
                    raise ValueError(
                        f"sample {sample.get('id')!r} holds {items} {m} item(s), but the prompt template "
                        f"(data.processor.prompt.template) has {count} slots {{{m}_1}}..{{{m}_{count}}}; give "
                        f"each sample {count}, or write as many numbered fields as a sample holds.")
                values.update({f"{m}_{i}": values[m] for i in range(1, count + 1)})
            elif isinstance(given, (list, tuple)) and m in self.media_tokens:
                raise ValueError(f"sample {sample.get('id')!r} holds a list of {len(given)} {m} items, but the prompt "
                                 f"template (data.processor.prompt.template) has one {{{m}}} field; number them "
                                 f"{{{m}_1}}..{{{m}_{len(given)}}}.")
        values["text"] = str(sample.get("text") or "") if text is None else text
        return FIELD.sub(lambda match: values.get(match.group(0)[1:-1], ""), template)

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer_ids(self, sample: Mapping[str, Any]) -> list[int]:
        """The answer's ids with the closing eos (``[]`` for a sample without ``target_text``)."""
        answer = sample.get("target_text")
        if answer is None:
            return []
        return [*self._tokens(self.answer_prefix + str(answer)), int(self.tokenizer.eos_token_id)]

    def prompt_ids(self, sample: Mapping[str, Any]) -> list[int]:
        """The prompt's ids, fitted into the budget left by the answer (see the module docstring)."""
        budget = self.max_length - len(self.answer_ids(sample))
        ids = self._tokens(self.render(sample))
        if len(ids) <= budget:
            return ids
        if self.overflow == "truncate_text":
            text_ids = self._tokens(str(sample.get("text") or ""))
            keep = len(text_ids) - (len(ids) - budget)
            if keep >= 0:
                shorter = self._tokens(self.render(sample, self.tokenizer.decode(text_ids[:keep])))
                if len(shorter) <= budget:
                    return shorter
        raise ValueError(
            f"sample {sample.get('id')!r}: the prompt takes {len(ids)} tokens"
            f"{f' + {self.max_length - budget} of answer' if budget < self.max_length else ''}, over the "
            f"budget of {self.max_length} (data.processor.prompt.max_length); media tokens are never cut. "
            "Raise the budget, shorten the template, or set overflow: truncate_text."
        )

    def lengths(self, samples: Sequence[Mapping[str, Any]]) -> list[int]:
        """Sequence length (prompt + answer) of each sample before any truncation, for a budget report."""
        return [len(self._tokens(self.render(s))) + len(self.answer_ids(s)) for s in samples]

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Token ids of a batch.

        Returns ``lm_input_ids`` / ``lm_attention_mask`` [B, L] (prompt + answer, right-padded with
        the pad token) and ``lm_prompt_ids`` / ``lm_prompt_mask`` [B, P] (the prompts alone, LEFT-padded,
        what generation and answer scoring start from). When every sample has a ``target_text``, also
        ``lm_labels`` [B, L] (answer ids, -100 elsewhere) and ``target_texts`` (B str).
        """
        prompts = [self.prompt_ids(s) for s in samples]
        answers = [self.answer_ids(s) for s in samples]
        with_answers = all(s.get("target_text") is not None for s in samples)
        if not with_answers:
            answers = [[] for _ in samples]
        pad = int(self.tokenizer.pad_token_id)
        ids, mask = pad_rows([p + a for p, a in zip(prompts, answers)], pad)
        out: dict[str, Any] = {"lm_input_ids": ids, "lm_attention_mask": mask}
        out["lm_prompt_ids"], out["lm_prompt_mask"] = pad_rows(prompts, pad, left=True)
        if with_answers:
            labels = torch.full_like(ids, -100)
            for i, (prompt, answer) in enumerate(zip(prompts, answers)):
                labels[i, len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer, dtype=torch.long)
            out["lm_labels"] = labels
            out["target_texts"] = [str(s["target_text"]) for s in samples]
        return out


def first_answer_tokens(tokenizer: Any, prefix: str, names: Sequence[str] | None) -> list[int] | None:
    """The first token of each name written as an answer (``prefix + name``); ``None`` without names.

    Raises:
        ValueError: two names start with the same token (the LM could not tell them apart).
    """
    if not names:
        return None
    firsts = [tokenizer(prefix + name, add_special_tokens=False)["input_ids"][0] for name in names]
    clash = sorted({n for n, t in zip(names, firsts) if firsts.count(t) > 1})
    if clash:
        raise ValueError(f"data.processor.prompt.label_answers {clash} start with the same token "
                         f"({tokenizer.convert_ids_to_tokens(firsts[list(names).index(clash[0])])!r}); "
                         "rename the classes so their first tokens differ.")
    return [int(t) for t in firsts]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> ``ids`` / ``mask`` [B, max length], padded on the right (or the ``left``)."""
    longest = max(len(r) for r in rows)
    ids = torch.full((len(rows), longest), int(pad_id), dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(longest - len(row), longest) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask

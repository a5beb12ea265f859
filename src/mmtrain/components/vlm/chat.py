"""Prompts of a whole vision-language model, through its own chat template.

``data.processor.prompt.template`` is the user's message: ``{text}`` is the sample's text and ``{image}``
(one image) or numbered ``{image_1}``, ``{image_2}``... (one item of the sample's image list each, in
order) mark where the images go. Each image field becomes the model's own image markup, the text its chat
template writes for one image part (LLaVA-1.5: ``<image>\\n``; Qwen2-VL:
``<|vision_start|><|image_pad|><|vision_end|>``), found by rendering the chat template with and without an
image; the processor then expands each image token to the image's feature count. The whole message goes
through the chat template (an optional ``system`` message first, the generation prompt last), so the
images stay where the template puts them, in any family.

Answers (instruction tuning, constrained answers, classification at the answer token) are written as the
chat template writes an assistant turn: ``answer_prefix: auto`` is what the template puts between the
generation prompt and the answer's text (LLaVA-1.5: a space; Qwen2-VL: nothing), and the tokenizer's eos
ends it (``</s>``, ``<|im_end|>``). ``label_answers`` (class names): the first token of each, as an
answer, is what the model is classified by (see :mod:`mmtrain.components.lm.prompt`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmtrain.components.lm.prompt import FIELD, first_answer_tokens, template_slots

SENTINEL = "\x1emmtrain\x1e"


class VLMPrompt:
    """Renders samples into chat-formatted prompt texts for a Hugging Face VLM processor.

    Args:
        processor: the VLM's processor (``tokenizer``, ``apply_chat_template``, ``image_token``).
        template: the user message, with ``{text}`` and ``{image}`` or ``{image_1}``.. fields.
        system: a system message, or ``None`` (the chat template's default, if any).
        chat: render through the chat template (``False``: the template text as is, each image as the chat
            template writes one, or as the bare image token without a template; for base models).
        class_token: a token added to the tokenizer and written after the prompt, whose hidden state a
            ``model.head`` classifies (``None``: classify at the last prompt position).
        label_answers: class names, for classification at the answer token.
        answer_prefix: written before an answer; ``auto``: as the chat template writes an assistant turn.
        max_length: token budget of a sequence (prompt with its image tokens, and the answer).
    """

    def __init__(
        self,
        processor: Any,
        *,
        template: str,
        system: str | None = None,
        chat: bool = True,
        class_token: str | None = None,
        label_answers: Sequence[str] | None = None,
        answer_prefix: str = "auto",
        max_length: int = 2048,
    ) -> None:
        slots = template_slots(template)
        other = sorted(set(slots) - {"image"})
        if other:
            raise ValueError(f"data.processor.prompt.template: a vision-language model reads images and text; "
                             f"the fields {{{other[0]}}} have no input in it.")
        self.processor = processor
        self.template = template
        self.system = system
        self.chat = bool(chat)
        self.slots = slots
        self.image_slots = slots["image"] or 1 if "image" in slots else 0
        self.max_length = int(max_length)
        self.class_token = class_token
        if class_token:
            self.tokenizer.add_special_tokens({"additional_special_tokens": [class_token]},
                                              replace_extra_special_tokens=False)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # an image is written as the family's chat template writes one (Qwen2-VL's image tokens need their
        # <|vision_start|> / <|vision_end|> around them), even when the message itself is not chat-formatted
        self.markup = (image_markup(processor) if self.chat or getattr(processor, "chat_template", None)
                       else str(processor.image_token))
        self.answer_prefix = self._answer_prefix() if answer_prefix == "auto" else str(answer_prefix)
        self.label_answers = [str(n) for n in label_answers] if label_answers else None
        if self.label_answers:
            self.answer_token_ids  # refuses names whose answers start with the same token

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def class_token_id(self) -> int | None:
        return None if not self.class_token else int(self.tokenizer.convert_tokens_to_ids(self.class_token))

    @property
    def image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(str(self.processor.image_token)))

    def _tokens(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def answer_token_ids(self) -> list[int] | None:
        """First token of each ``label_answers`` name written as an answer (``None`` without them).

        Raises:
            ValueError: two names start with the same token.
        """
        return first_answer_tokens(self.tokenizer, self.answer_prefix, self.label_answers)

    def images_of(self, sample: Mapping[str, Any]) -> list[Any]:
        """The sample's images, as many as the template has image fields.

        Raises:
            ValueError: the sample holds more or fewer (named, with the template key).
        """
        given = sample.get("image")
        images = [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
        if images and len(images) != self.image_slots:
            fields = (f"{{image_1}}..{{image_{self.image_slots}}}" if self.slots.get("image") else
                      "{image}" if self.image_slots else "no image field")
            raise ValueError(f"sample {sample.get('id')!r} holds {len(images)} image(s), but the prompt template "
                             f"(data.processor.prompt.template) has {self.image_slots} slot(s) ({fields}); give each "
                             "sample as many images as the template has fields.")
        return images

    def render(self, sample: Mapping[str, Any]) -> str:
        """The prompt text of one sample: chat-formatted, with the generation prompt (and class token)."""
        with_images = bool(self.images_of(sample))
        values = {"text": str(sample.get("text") or ""), "image": self.markup if with_images else ""}
        values.update({f"image_{i}": values["image"] for i in range(1, self.image_slots + 1)})
        message = FIELD.sub(lambda match: values.get(match.group(0)[1:-1], ""), self.template)
        text = self._chat(message) if self.chat else message
        return text + (self.class_token or "")

    def _chat(self, user: str, answer: str | None = None) -> str:
        messages = [{"role": "system", "content": [{"type": "text", "text": self.system}]}] if self.system else []
        messages.append({"role": "user", "content": [{"type": "text", "text": user}]})
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None)

    def _answer_prefix(self) -> str:
        """What the chat template writes between the generation prompt and an answer's text."""
        if not self.chat:
            return " "
        prompt, full = self._chat("q"), self._chat("q", SENTINEL)
        return full[len(prompt):full.index(SENTINEL)] if full.startswith(prompt) and SENTINEL in full else ""

    def answer_ids(self, sample: Mapping[str, Any]) -> list[int]:
        """The answer's ids with the closing eos (``[]`` for a sample without ``target_text``)."""
        answer = sample.get("target_text")
        if answer is None:
            return []
        return [*self._tokens(self.answer_prefix + str(answer)), int(self.tokenizer.eos_token_id)]


def image_markup(processor: Any) -> str:
    """The text the processor's chat template writes for one image part of a user message.

    Raises:
        ValueError: no chat template, or one that writes no image token for an image part.
    """
    if not getattr(processor, "chat_template", None):
        raise ValueError("the VLM's processor has no chat template: set data.processor.prompt.chat=false to write "
                         "the template text as is (images as the bare image token), or give the processor one.")

    def render(content: list[dict[str, Any]]) -> str:
        return processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)

    plain = render([{"type": "text", "text": SENTINEL}])
    with_image = render([{"type": "image"}, {"type": "text", "text": SENTINEL}])
    start = 0
    while start < min(len(plain), len(with_image)) and plain[start] == with_image[start]:
        start += 1
    end = 0
    while end < min(len(plain), len(with_image)) - start and plain[-1 - end] == with_image[-1 - end]:
        end += 1
    markup = with_image[start:len(with_image) - end]
    token = str(getattr(processor, "image_token", "") or "")
    if not token or token not in markup:
        raise ValueError(f"the VLM's chat template writes no image token ({token!r}) for an image part (it wrote "
                         f"{markup!r}); use a processor whose chat template places images, or set "
                         "data.processor.prompt.chat=false.")
    return markup

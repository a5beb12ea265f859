"""``LLMModel``: encoder features as pseudo-tokens inside a causal LM (LLaVA-style).

encoders -> one projector per slot (``[B, M, E]`` pseudo-tokens) -> written into the LM's
``inputs_embeds`` at the prompt's placeholder positions (``<VIDEO_PAD>``..., see
:mod:`mmtrain.components.lm.prompt`) -> causal LM. With a ``head``, the LM's last hidden state at the class
token (e.g. ``<EMO>``) is classified; with ``lm_labels`` the LM loss (-100 ignored) is returned.

Several items of a modality (``pixel_values`` [B, K, ...], a prompt with ``{image_1}``..``{image_K}``):
each item is encoded and projected on its own and item ``i``'s pseudo-tokens fill the ``i``-th placeholder
block. Classification at the answer token (``answer_token_ids``, no head): the LM head's rows of those
tokens, at the class token or else the last prompt position, give the class logits;
:meth:`LLMModel.compare_both_orders` also scores the pair with its two items swapped (task=pairwise).
With ``alignment`` (:mod:`mmtrain.models.alignment`) each slot is also projected into a shared embedding
space (``LLMOutput.embeddings``), for contrastive and Matryoshka terms beside the LM loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from mmtrain.config.plain import plain
from mmtrain.config.validate import injects
from mmtrain.models.adapters import AdapterExports
from mmtrain.models.alignment import AlignmentHeads
from mmtrain.models.llm_readout import check_readout, class_readout
from mmtrain.models.base import (
    ITEM_NDIM,
    MODALITY_INPUTS,
    MultimodalPreTrainedModel,
    flatten_item_inputs,
    modality_of,
    run_part,
)
from mmtrain.models.configuration import MultimodalConfig
from mmtrain.models.registry import ModelKind, config_fields, predict_label, register_model_kind
from mmtrain.components.lm import lora as lora_lib
from mmtrain.components.lm.qlora import build_quantized_decoder


class LLMConfig(MultimodalConfig):
    """Specs of an LLM-decoder model (see :class:`MultimodalConfig` for ``encoders``/``trainable``).

    Args:
        projector: one projector spec, built per encoder slot (``input_dim``/``output_dim`` injected).
        decoder: causal LM spec (``mmtrain.components.lm.decoder.CausalLMDecoder``; ``vocab_size`` injected).
        head: classification head on the class token's hidden state, or ``None`` (LM loss only).
        lm_vocab_size: the prompt tokenizer's length (marker tokens included).
        media_token_ids: encoder slot -> id of its placeholder token.
        class_token_id: id of the class token (needed with a ``head``).
        lora: LoRA on the LM (``r``, ``alpha``, ``dropout``, ``target_modules``, ``quantize``) or
            ``None``; see :mod:`mmtrain.components.lm.lora`.
        answer_token_ids: per class, the token the LM answers it with (classification at the answer
            token, without a head; :attr:`mmtrain.components.lm.prompt.PromptBuilder.answer_token_ids`).
        alignment: per-slot projection spec into a shared embedding space (``ProjectionHead``;
            ``input_dim`` injected) or ``None``; see :mod:`mmtrain.models.alignment`.
        align_resampler: per-slot resampler before the alignment projection, or ``None``.
    """

    model_type = "mmtrain_llm"
    spec_keys = ("encoders", "projector", "decoder", "head", "alignment", "align_resampler")  # no annotation: a class constant

    projector: dict[str, Any] | None = None
    decoder: dict[str, Any] | None = None
    head: dict[str, Any] | None = None
    lm_vocab_size: int | None = None
    media_token_ids: dict[str, int] | None = None
    class_token_id: int | None = None
    lora: dict[str, Any] | None = None
    answer_token_ids: list[int] | None = None
    alignment: dict[str, Any] | None = None
    align_resampler: dict[str, Any] | None = None


@dataclass
class LLMOutput(ModelOutput):
    """``loss`` (classification CE + LM loss, whichever apply), ``logits`` [B, C] (with a head),
    ``lm_loss`` (mean NLL of the ``lm_labels`` tokens), ``lm_logits`` [B, L, V] (``return_lm_logits``
    only), ``hidden`` [B, L, E] (the LM's last hidden states), ``lm_nll_sum`` / ``lm_token_count``
    (summed NLL and number of scored tokens, for perplexity); with alignment heads ``embeddings`` (slot ->
    ``[B, E]``) and ``present`` (slot -> ``[B]`` bool)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    lm_logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    lm_nll_sum: torch.Tensor | None = None
    lm_token_count: torch.Tensor | None = None
    embeddings: dict[str, torch.Tensor] | None = None
    present: dict[str, torch.Tensor] | None = None


class LLMModel(AdapterExports, AlignmentHeads, MultimodalPreTrainedModel):
    """Encoders + projectors + causal LM (+ a classification head at the class token).

    Forward takes the encoders' inputs (as for the other kinds) plus ``lm_input_ids`` /
    ``lm_attention_mask`` [B, L] from the prompt builder, optionally ``labels`` [B] (classes)
    and ``lm_labels`` [B, L] (next-token targets, -100 ignored).
    """

    config_class = LLMConfig
    lora_module_path = "decoder.lm"
    base_spec_key = "decoder"

    def __init__(self, config: LLMConfig) -> None:
        lora = lora_lib.lora_settings(config.lora, config.trainable)  # checked before anything is built
        super().__init__(config)
        if not config.decoder or not config.projector:
            raise ValueError("LLMConfig needs 'decoder' and 'projector' specs.")
        missing = sorted(set(config.encoders) - set(config.media_token_ids or {}))
        if missing and not config.alignment:
            raise ValueError(f"the prompt has no placeholder for encoder slots {missing} (LLMConfig.media_token_ids): "
                             "a text tower is read for alignment only (set model.alignment), other slots need "
                             "their modality in data.processor.modalities.")
        if lora and lora["quantize"]:  # QLoRA: the pretrained LM loaded 4/8-bit (bitsandbytes; GPU or CPU)
            self.decoder = build_quantized_decoder(config.decoder, config.lm_vocab_size, lora["quantize"])
        else:
            self.decoder = self.build_part("decoder", vocab_size=config.lm_vocab_size)
        width = int(self.decoder.hidden_size)
        placed = {name: dim for name, dim in self.encoder_dims.items() if name not in missing}  # slots in the prompt
        self.projector = nn.ModuleDict(
            {name: self.build_part("projector", input_dim=dim, output_dim=width) for name, dim in placed.items()}
        )
        self.build_alignment()
        self.head = None
        check_readout(config)
        if config.head:
            if config.class_token_id is None:
                raise ValueError("a classification head needs the class token (LLMConfig.class_token_id).")
            self.head = self.build_part("head", input_dim=width, num_labels=config.num_labels)
        self.finish_init()
        if lora:  # after post_init: the LM's base weights freeze, adapters and new token rows train
            rows = lora_lib.new_token_ids(config.decoder, config.lm_vocab_size, config.class_token_id)
            lora_lib.apply_lora(self.decoder.lm, lora, rows)

    def components(self) -> dict[str, nn.Module]:
        parts = {**super().components(), "projector": self.projector, "decoder": self.decoder,
                 **self.alignment_parts()}
        return parts if self.head is None else {**parts, "head": self.head}

    sharded_entry_points = ("generate_answers", "score_answers", "compare_both_orders")

    def shard_units(self) -> dict[str, nn.Module]:
        """Not the decoder: its embedding table and LM head (tied in many LMs) are read outside the LM's forward,
        so they stay in the root unit; its transformer blocks are units of their own."""
        return {name: part for name, part in self.components().items() if name != "decoder"}

    def pseudo_tokens(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Slot -> projected features ``[B, M, E]``, or ``[B, K, M, E]`` for K items a sample."""
        return {name: self._slot_tokens(name, batch, lambda n, b: self.encode_one(n, **b)) for name in self.projector}

    def _slot_tokens(self, name: str, batch: Mapping[str, Any], encode: Any) -> torch.Tensor:
        keys = {k for k in MODALITY_INPUTS[modality_of(name)] if batch.get(k) is not None}
        if not any(batch[k].dim() == ITEM_NDIM.get(k) for k in keys):
            return self.projector[name](encode(name, batch))
        flat, b, k = flatten_item_inputs({key: batch[key] for key in keys} | _presence(batch, name), [name],
                                         kind="an LLM model with numbered placeholders")
        tokens = self.projector[name](encode(name, flat))  # [B*K, M, E]
        return tokens.reshape(b, k, *tokens.shape[1:])

    def inputs_embeds(self, lm_input_ids: torch.Tensor, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Token embeddings ``[B, L, E]`` with each slot's pseudo-tokens at its placeholder positions.

        A sample holds either exactly ``M`` placeholders of a slot (the projector's count) or none
        (the modality is absent); anything else means the prompt and the model disagree.
        """
        embeds = self.decoder.embed(lm_input_ids)
        for name, feats in tokens.items():
            feats = feats.flatten(1, 2) if feats.dim() == 4 else feats  # K items: blocks in item order
            positions = lm_input_ids == int(self.config.media_token_ids[name])  # [B, L]
            counts = positions.sum(dim=1)
            wrong = [(i, int(c)) for i, c in enumerate(counts.tolist()) if c not in (0, feats.shape[1])]
            if wrong:
                raise ValueError(
                    f"prompt rows {wrong[:5]} hold a number of '{name}' placeholders other than the "
                    f"projector's {feats.shape[1]} pseudo-tokens (or 0); build prompts with the same "
                    "media_tokens as model.projector.num_tokens."
                )
            rows = counts > 0
            if bool(rows.any()):
                embeds = embeds.masked_scatter(positions[..., None], feats[rows].to(embeds.dtype))
        return embeds

    def class_logits(self, lm_input_ids: torch.Tensor, lm_attention_mask: torch.Tensor | None,
                     hidden: torch.Tensor) -> torch.Tensor | None:
        """Class logits ``[B, C]`` from the LM's last hidden states ``[B, L, E]``: the head at the class
        token, or the LM head's answer-token rows (:attr:`LLMConfig.answer_token_ids`); ``None`` without either."""
        return class_readout(hidden, lm_input_ids, lm_attention_mask, config=self.config, head=self.head,
                             lm_head=self.decoder.lm.get_output_embeddings())

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        if batch.get("lm_input_ids") is None:
            raise ValueError("the batch has no lm_input_ids: an LLM model needs a prompt (data.processor.prompt).")
        checked = lambda n, b: run_part(f"model.encoders.{n}", lambda: self.encode_one(n, **b))  # noqa: E731
        tokens = {n: run_part("model.projector", lambda n=n: self._slot_tokens(n, batch, checked)) for n in self.projector}
        if self.align_projection is not None:
            run_part("model.alignment", lambda: self.align(self.encode_checked(batch), batch))
        embeds = run_part("model.decoder", lambda: self.inputs_embeds(batch["lm_input_ids"], tokens))
        out = run_part("model.decoder", lambda: self.decoder(embeds, batch.get("lm_attention_mask")))
        run_part("model.head", lambda: self.class_logits(batch["lm_input_ids"], batch.get("lm_attention_mask"),
                                                         out.hidden_states[-1]))

    def forward(
        self,
        lm_input_ids: torch.Tensor,
        lm_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        lm_labels: torch.Tensor | None = None,
        return_lm_logits: bool = False,
        **batch: Any,
    ) -> LLMOutput:
        """``return_lm_logits``: also the LM's logits at every position (costly with a 50k vocabulary;
        the LM loss needs them only at the answer positions and computes just those)."""
        if self.align_projection is None:
            return self._run(self.pseudo_tokens(batch), lm_input_ids, lm_attention_mask, labels, lm_labels,
                             return_lm_logits)
        if any(batch[k].dim() == n for k, n in ITEM_NDIM.items() if batch.get(k) is not None):
            raise ValueError("model.alignment embeds one item of each modality a sample; this batch holds several "
                             "(a prompt with {image_1}, {image_2}...).")
        outputs = self.encode(**batch)  # once: the slots' pseudo-tokens and their embeddings
        tokens = {name: self.projector[name](outputs[name]) for name in self.projector}
        out = self._run(tokens, lm_input_ids, lm_attention_mask, labels, lm_labels, return_lm_logits)
        out.embeddings, out.present = self.align(outputs, batch)
        return out

    def _run(self, tokens: Mapping[str, torch.Tensor], lm_input_ids: torch.Tensor,
             lm_attention_mask: torch.Tensor | None, labels: torch.Tensor | None = None,
             lm_labels: torch.Tensor | None = None, return_lm_logits: bool = False) -> LLMOutput:
        embeds = self.inputs_embeds(lm_input_ids, tokens)
        out = self.decoder(embeds, lm_attention_mask, labels=lm_labels, full_logits=return_lm_logits)
        hidden = out.hidden_states[-1]
        loss = None
        logits = self.class_logits(lm_input_ids, lm_attention_mask, hidden)
        if logits is not None and labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        if out.loss is not None:
            loss = out.loss if loss is None else loss + out.loss
        return LLMOutput(loss=loss, logits=logits, lm_loss=out.loss, lm_logits=out.logits, hidden=hidden,
                         lm_nll_sum=out.nll_sum, lm_token_count=out.token_count)

    def compare_both_orders(
        self, lm_input_ids: torch.Tensor, lm_attention_mask: torch.Tensor | None = None, **batch: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``[B, C]`` for the items as given and with their order reversed (``(a, b)`` and
        ``(b, a)``: task=pairwise's swap consistency), from one encoding pass and two LM passes."""
        tokens = self.pseudo_tokens(batch)
        if not any(t.dim() == 4 for t in tokens.values()):
            raise ValueError("compare_both_orders needs several items a sample (a prompt with {image_1}, {image_2}).")
        swapped = {n: t.flip(1) if t.dim() == 4 else t for n, t in tokens.items()}
        first = self._run(tokens, lm_input_ids, lm_attention_mask).logits
        second = self._run(swapped, lm_input_ids, lm_attention_mask).logits
        if first is None:
            raise ValueError("compare_both_orders needs class logits: a model.head, or data.processor.prompt.label_answers.")
        return first, second

    def prompt_embeds(self, lm_prompt_ids: torch.Tensor, **batch: Any) -> torch.Tensor:
        """Embeddings ``[B, P, E]`` of the (left-padded) prompts with the media pseudo-tokens in place."""
        return self.inputs_embeds(lm_prompt_ids, self.pseudo_tokens(batch))

    @torch.no_grad()
    def generate_answers(
        self,
        lm_prompt_ids: torch.Tensor,
        lm_prompt_mask: torch.Tensor,
        *,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
        **batch: Any,
    ) -> torch.Tensor:
        """Greedy answers ``[B, N]`` (new token ids, eos kept, then padding) to the prompts of a batch
        (``lm_prompt_ids`` / ``lm_prompt_mask`` [B, P] from the processor, plus the encoders' inputs)."""
        from mmtrain.components.lm.generate import greedy_generate, gathers_parameters

        embeds = self.prompt_embeds(lm_prompt_ids, **batch)
        return greedy_generate(self.decoder, embeds, lm_prompt_mask, max_new_tokens=max_new_tokens,
                               eos_token_id=eos_token_id, pad_token_id=pad_token_id, synced=gathers_parameters(self))

    @torch.no_grad()
    def score_answers(
        self, lm_prompt_ids: torch.Tensor, lm_prompt_mask: torch.Tensor, *, candidates: list[list[int]], **batch: Any
    ) -> torch.Tensor:
        """Log-probability ``[B, C]`` of each candidate answer (token ids, eos included) after each prompt;
        ``argmax(-1)`` is the answer constrained to the candidates."""
        from mmtrain.components.lm.generate import score_candidates

        embeds = self.prompt_embeds(lm_prompt_ids, **batch)
        return score_candidates(self.decoder, embeds, lm_prompt_mask, candidates)


@injects(own=["id2label", "allowed_target_prefixes", "lm_vocab_size", "media_token_ids", "class_token_id",
              "answer_token_ids"],
         projector=["input_dim", "output_dim"], decoder=["vocab_size"], head=["input_dim", "num_labels"],
         alignment=["input_dim"], align_resampler=["input_dim", "output_dim"])
def build_llm_model(
    *,
    encoders: Mapping[str, Any],
    projector: Mapping[str, Any],
    decoder: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    lm_vocab_size: int,
    media_token_ids: Mapping[str, int],
    head: Mapping[str, Any] | None = None,
    class_token_id: int | None = None,
    trainable: Mapping[str, bool] | None = None,
    lora: Mapping[str, Any] | None = None,
    answer_token_ids: Sequence[int] | None = None,
    alignment: Mapping[str, Any] | None = None,
    align_resampler: Mapping[str, Any] | None = None,
) -> LLMModel:
    """Build an LLM-decoder model: encoders -> per-slot projector -> pseudo-tokens in a causal LM.

    Args: as :func:`build_multimodal_model`, plus ``projector`` (one spec, built per slot),
    ``decoder`` (causal LM spec), ``head`` (classifier at the class token, or ``None``), and the
    prompt tokenizer's facts: ``lm_vocab_size``, ``media_token_ids`` (slot -> placeholder id) and
    ``class_token_id`` (see :class:`mmtrain.components.lm.prompt.PromptBuilder`), and ``answer_token_ids``
    (classification at the answer token, with ``head=None``); ``alignment`` / ``align_resampler``: per-slot
    projection (and resampler) into a shared embedding space (:mod:`mmtrain.models.alignment`). ``lora``: LoRA on the LM
    (``r``, ``alpha``, ``dropout``, ``target_modules``, ``quantize``; see :mod:`mmtrain.components.lm.lora`) or ``None``.
    """
    parts = {"projector": projector, "decoder": decoder, **({"head": head} if head else {}),
             **({"alignment": alignment} if alignment else {}),
             **({"align_resampler": align_resampler} if align_resampler else {})}
    return LLMModel(LLMConfig(
        **config_fields(encoders=encoders, id2label=id2label, allowed_target_prefixes=allowed_target_prefixes,
                        trainable=trainable, **parts),
        lm_vocab_size=int(lm_vocab_size), media_token_ids={str(k): int(v) for k, v in plain(media_token_ids).items()},
        class_token_id=None if class_token_id is None else int(class_token_id),
        lora=None if lora is None else dict(plain(lora)),
        answer_token_ids=None if not answer_token_ids else [int(t) for t in answer_token_ids],
    ))


def _presence(batch: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The batch's presence mask of slot ``name`` (``<slot>_present`` or ``<modality>_present``), if any."""
    key = next((k for k in (f"{name}_present", f"{modality_of(name)}_present") if k in batch), None)
    return {} if key is None else {key: batch[key]}


def predict_llm(model: LLMModel, processor: Any, batch: dict[str, Any], *, choices: Sequence[str] | None = None,
                max_new_tokens: int = 16, **options: Any) -> list[dict[str, Any]]:
    """``predict`` of an LLM-decoder model, per sample: with a head, its label; without (instruction-tuned),
    the answer to the prompt, greedy, or the likeliest of ``choices`` with their probabilities."""
    if model.head is not None or model.config.answer_token_ids:
        if choices:
            raise ValueError("--choice is for instruction-tuned LLM models (model=llm without a head).")
        return predict_label(model, processor, batch)
    builder, tokenizer = processor.prompt_builder, processor.tokenizer
    # the prompts alone, left-padded (lm_input_ids also holds a sample's answer when the data has one)
    prompt = {"lm_prompt_ids": batch.pop("lm_prompt_ids"), "lm_prompt_mask": batch.pop("lm_prompt_mask")}
    for key in ("lm_input_ids", "lm_attention_mask", "lm_labels"):
        batch.pop(key, None)
    if choices:
        candidates = [builder.answer_ids({"target_text": c}) for c in choices]
        scores = model.score_answers(**prompt, **batch, candidates=candidates).float().softmax(-1)  # [B, C]
        return [{"answer": choices[int(row.argmax())],
                 "choice_probabilities": {c: round(float(p), 6) for c, p in zip(choices, row.tolist())}}
                for row in scores]
    ids = model.generate_answers(**prompt, **batch, max_new_tokens=max_new_tokens,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return [{"answer": tokenizer.decode(row, skip_special_tokens=True).strip()} for row in ids]


KIND = register_model_kind(ModelKind(
    name="llm", config_class=LLMConfig, model_class=LLMModel, builder=build_llm_model, predict=predict_llm,
    predict_options=frozenset({"choices", "max_new_tokens"}), processor=False,
))

"""Greedy generation and candidate scoring for a :class:`~mmtrain.components.lm.decoder.CausalLMDecoder`.

Both start from ``inputs_embeds`` ``[B, L, E]`` (the LLM model puts media pseudo-tokens into the
prompt's embeddings, so there are no ids to start from) with a LEFT-padded ``attention_mask``
``[B, L]`` (``lm_prompt_ids`` of :mod:`mmtrain.components.lm.prompt`, or :func:`left_pad`). Every prompt row
must hold at least one real token.

Design:

* **Own cached loop, not** ``lm.generate``. A pretrained LM's ``generation_config`` (e.g. Qwen2.5:
  ``repetition_penalty=1.05``, sampling defaults) fills every field a caller leaves unset, so
  ``generate`` is not plain greedy decoding unless all of them are overridden. The loop here is
  exactly ``argmax`` of the LM's next-token logits, with the LM's own KV cache (the cache object the
  LM returns for ``use_cache=True``: a ``DynamicCache`` for GPT-2 / Llama / Qwen2 / ``mmtrain_trm``).
  For the tiny decoders it yields the same tokens as ``lm.generate(do_sample=False)`` (tested).
* **Position ids** are explicit: ``cumsum(mask) - 1`` (padding -> 0) for the prompt, then
  ``last + 1, last + 2, ...`` for the new tokens. GPT-2 (learned positions) would otherwise count
  the padding; every row therefore gets the positions of its unpadded prompt.
* **eos**: the eos token is KEPT in the output where it was produced; the row's later entries are
  ``pad_token_id``. Decoding stops when every row has produced eos, or after ``max_new_tokens``
  (the output has ``N <= max_new_tokens`` columns). Same layout as Hugging Face ``generate``.
* **Candidates** (:func:`score_candidates`): the prompt runs once with the cache; the cache is
  repeated ``C`` times (``Cache.batch_repeat_interleave``) and all ``B * C`` right-padded
  candidates run in one more forward. Row ``b * C + c`` is prompt ``b`` followed by candidate ``c``.

Models run in eval mode (restored afterwards) under ``torch.no_grad``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from mmtrain.components.lm.decoder import CausalLMDecoder
from mmtrain.components.lm.prompt import pad_rows


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id rows into ``(ids, mask)``, both LongTensor ``[B, max_len]`` (mask 1 = real).

    Raises:
        ValueError: no rows, or an empty row (a prompt needs at least one real token).
    """
    if len(rows) == 0:
        raise ValueError("left_pad: got no rows; pass at least one non-empty list of token ids.")
    for index, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"left_pad: row {index} is empty; every prompt needs at least one real token.")
    return pad_rows(rows, pad_id, left=True)


def prompt_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions ``[B, L]`` of a padded prompt: real tokens count from 0, padding gets 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _check_prompt(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """Validate a left-padded prompt; returns the mask as a LongTensor ``[B, L]``."""
    if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden_size:
        raise ValueError(
            f"inputs_embeds must be [batch, length, {hidden_size}] (the decoder's width), got "
            f"{tuple(inputs_embeds.shape)}."
        )
    if attention_mask.shape != inputs_embeds.shape[:2]:
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must be [batch, length] = "
            f"{tuple(inputs_embeds.shape[:2])}, matching inputs_embeds."
        )
    if inputs_embeds.shape[1] == 0:
        raise ValueError("the prompt is empty (length 0); every row needs at least one real token.")
    mask = attention_mask.long()
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token).")
    not_left = (mask[:, 1:] < mask[:, :-1]).any(dim=1) | (mask[:, -1] == 0)
    if bool(not_left.any()):
        row = int(not_left.nonzero()[0, 0])
        raise ValueError(
            f"attention_mask row {row} is not LEFT-padded (0s then at least one 1): {mask[row].tolist()}. "
            "Generation continues every row from its last column; tokenize prompts with left padding "
            "(lm_prompt_ids, or mmtrain.components.lm.generate.left_pad)."
        )
    return mask


@contextlib.contextmanager
def _inference(module: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, caches allowed) and no autograd; every submodule's own training flag
    is restored after (a frozen part kept in eval stays in eval)."""
    flags = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for sub, flag in flags:
            sub.training = flag


def _last_logits_kwargs(lm: nn.Module) -> dict[str, int]:
    """``{"logits_to_keep": 1}`` when the LM supports it (saves the [B, L, V] prompt logits)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(lm.forward).parameters else {}


def _run_prompt(lm: nn.Module, inputs_embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, object]:
    """Prompt forward with the cache: ``(next-token logits [B, V], cache)``."""
    out = lm(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=prompt_position_ids(mask),
             use_cache=True, **_last_logits_kwargs(lm))
    if out.past_key_values is None:
        raise RuntimeError(f"{type(lm).__name__} returned no KV cache for use_cache=True; it cannot generate here.")
    return out.logits[:, -1], out.past_key_values


def gathers_parameters(module: nn.Module) -> bool:
    """Whether running ``module`` gathers its parameters from every rank (an FSDP2 unit, DeepSpeed ZeRO-3
    partitions): then every rank must run it the same number of times (generation stops together: ``synced``)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule) or any(hasattr(p, "ds_id") for p in module.parameters())


def _finished_everywhere(finished: torch.Tensor, synced: bool) -> bool:
    """Whether every row is finished; with ``synced`` on every rank of the process group (one all-reduce)."""
    done = finished.all()
    if synced and torch.distributed.is_available() and torch.distributed.is_initialized():
        done = done.to(torch.int32)
        torch.distributed.all_reduce(done, op=torch.distributed.ReduceOp.MIN)
    return bool(done)


def greedy_generate(
    decoder: CausalLMDecoder,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    eos_token_id: int | Sequence[int],
    pad_token_id: int,
    synced: bool = False,
) -> torch.Tensor:
    """Greedy (argmax) continuation of left-padded prompts, using the LM's KV cache.

    Args:
        decoder: the causal LM part (``decoder.lm`` is called).
        inputs_embeds: prompt embeddings ``[B, L, E]``.
        attention_mask: ``[B, L]``, 1 = real token, LEFT-padded (each row: 0s then >= 1 ones).
        max_new_tokens: most tokens generated per row (>= 1).
        eos_token_id: end token id, or several (e.g. Qwen's ``<|im_end|>`` and ``<|endoftext|>``).
        pad_token_id: written after a row's eos.
        synced: stop only once every rank's rows are finished (a sharded LM, whose every step is a collective).

    Returns:
        LongTensor ``[B, N]`` with ``1 <= N <= max_new_tokens``, on ``inputs_embeds.device``: the new
        tokens only (not the prompt). A finished row keeps its eos and holds ``pad_token_id`` after
        it; ``N < max_new_tokens`` only when every row produced eos.
    """
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
    eos_ids = [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(t) for t in eos_token_id]
    if not eos_ids:
        raise ValueError("eos_token_id is an empty sequence; pass at least one end token id.")
    lm = decoder.lm
    mask = _check_prompt(inputs_embeds, attention_mask, decoder.hidden_size)
    device = inputs_embeds.device
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    with _inference(lm):
        logits, cache = _run_prompt(lm, inputs_embeds, mask)
        position = prompt_position_ids(mask)[:, -1:] + 1  # [B, 1]; the last column is real (left padding)
        finished = torch.zeros(mask.shape[0], dtype=torch.bool, device=device)
        steps: list[torch.Tensor] = []
        for step in range(int(max_new_tokens)):
            token = logits.argmax(dim=-1)
            token = torch.where(finished, torch.full_like(token, int(pad_token_id)), token)
            steps.append(token)
            finished = finished | torch.isin(token, eos)
            if step == int(max_new_tokens) - 1 or _finished_everywhere(finished, synced):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            out = lm(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                     past_key_values=cache, use_cache=True)
            logits, cache = out.logits[:, -1], out.past_key_values
            position = position + 1
    return torch.stack(steps, dim=1)


def score_candidates(
    decoder: CausalLMDecoder,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    candidates: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Total log-probability of each candidate token sequence continuing each prompt.

    ``score[b, c] = sum_k log p(cand_c[k] | prompt_b, cand_c[:k])`` (natural log). End each
    candidate with the eos id so that a prefix ("seven") does not win over a longer label
    ("seventeen") for free; sums are not length-normalised, so shorter candidates are favoured
    otherwise. Classification by generation constrained to the label set: ``scores.argmax(-1)``
    (see :func:`constrained_answer`).

    Args:
        decoder: the causal LM part.
        inputs_embeds: prompt embeddings ``[B, L, E]``.
        attention_mask: ``[B, L]``, LEFT-padded, at least one real token per row.
        candidates: ``C`` non-empty token id sequences (may differ in length).

    Returns:
        Tensor ``[B, C]`` on ``inputs_embeds.device``, float32 (float64 for a float64 LM).
    """
    if len(candidates) == 0:
        raise ValueError("score_candidates: got no candidates; pass at least one token id sequence.")
    for index, candidate in enumerate(candidates):
        if len(candidate) == 0:
            raise ValueError(f"score_candidates: candidate {index} is empty; give each one its tokens (and eos).")
    lm = decoder.lm
    mask = _check_prompt(inputs_embeds, attention_mask, decoder.hidden_size)
    device = inputs_embeds.device
    batch, count = mask.shape[0], len(candidates)
    width = max(len(candidate) for candidate in candidates)
    cand_ids = torch.zeros((count, width), dtype=torch.long, device=device)  # right-padded with id 0 (masked)
    cand_mask = torch.zeros((count, width), dtype=torch.long, device=device)
    for index, candidate in enumerate(candidates):
        cand_ids[index, : len(candidate)] = torch.as_tensor(list(candidate), dtype=torch.long)
        cand_mask[index, : len(candidate)] = 1
    if int(cand_ids.max()) >= decoder.vocab_size or int(cand_ids.min()) < 0:
        raise ValueError(f"candidate token ids must lie in [0, {decoder.vocab_size}) (the LM's vocabulary).")
    with _inference(lm):
        first_logits, cache = _run_prompt(lm, inputs_embeds, mask)
        dtype = torch.promote_types(first_logits.dtype, torch.float32)
        first = torch.log_softmax(first_logits.to(dtype), dim=-1)  # [B, V]
        scores = first[:, cand_ids[:, 0]]  # [B, C]: the first candidate token given the prompt
        if width > 1:
            cache.batch_repeat_interleave(count)  # row b*C + c = prompt b
            ids = cand_ids[:, :-1].repeat(batch, 1)  # [B*C, K-1]: inputs predicting tokens 1..K-1
            full_mask = torch.cat([mask.repeat_interleave(count, dim=0), cand_mask[:, :-1].repeat(batch, 1)], dim=1)
            start = prompt_position_ids(mask)[:, -1].repeat_interleave(count) + 1  # [B*C]
            positions = start[:, None] + torch.arange(width - 1, device=device)[None, :]
            out = lm(input_ids=ids, attention_mask=full_mask, position_ids=positions,
                     past_key_values=cache, use_cache=True)
            logits = out.logits.to(dtype)  # [B*C, K-1, V]
            targets = cand_ids[:, 1:].repeat(batch, 1)  # [B*C, K-1]
            token_logp = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)
            token_logp = torch.where(cand_mask[:, 1:].repeat(batch, 1).bool(), token_logp, 0.0)
            scores = scores + token_logp.sum(dim=1).view(batch, count)
    return scores


def constrained_answer(
    decoder: CausalLMDecoder,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    candidates: Sequence[Sequence[int]],
) -> torch.Tensor:
    """Index ``[B]`` (LongTensor) of the most likely candidate per prompt: ``score_candidates(...).argmax(-1)``."""
    return score_candidates(decoder, inputs_embeds, attention_mask, candidates).argmax(dim=-1)

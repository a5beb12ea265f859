"""Token budget check before training: every sample's prompt (+ answer) against the LM's limits.

Before the first step, each split's samples are tokenized as the prompt builder will tokenize them
(text, markers, ``num_tokens`` placeholders per media modality the sample has, the answer) without
decoding any media (:func:`sample_views`). The longest sample of each split is reported. A sample
over ``data.processor.prompt.max_length`` stops the run naming its id and length
(``overflow: error``); with ``overflow: truncate_text`` its text will be shortened, which is
reported, and a sample whose media, template and answer alone overflow still stops the run.
Media tokens are never cut. The budget itself must fit the LM's position table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

from mmtrain.components.lm.prompt import PromptBuilder

log = logging.getLogger(__name__)
#: How many offending sample ids an error lists.
SHOWN = 10


def sample_views(dataset: Dataset) -> list[dict[str, Any]] | None:
    """Each sample's plain fields (id, text, target_text...) with ``<modality>: True`` for the media it
    has, without decoding media; ``None`` for a dataset that cannot list them (streamed data)."""
    views = getattr(dataset, "sample_views", None)
    return views() if callable(views) else None


def lm_positions(decoder_config: Any) -> int | None:
    """The LM's maximum sequence length (``max_position_embeddings`` / GPT-2's ``n_positions``)."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(decoder_config, key, None)
        if value:
            return int(value)
    return None


def check_token_budget(
    builder: PromptBuilder, splits: Mapping[str, Dataset], max_positions: int | None
) -> dict[str, dict[str, Any]]:
    """Check every sample of ``splits`` against the budget; returns per split
    ``{samples, longest_id, longest_tokens, budget, truncated: [ids]}`` (streamed splits: ``{}``).

    Raises:
        ValueError: the budget exceeds the LM's ``max_positions``, or a sample does not fit (see the
            module docstring); the message names the sample ids and lengths.
    """
    if max_positions is not None and builder.max_length > max_positions:
        raise ValueError(
            f"data.processor.prompt.max_length={builder.max_length} exceeds the LM's {max_positions} "
            "positions (model.decoder config); lower the budget or use an LM with more positions."
        )
    report: dict[str, dict[str, Any]] = {}
    for split, dataset in splits.items():
        views = sample_views(dataset)
        if views is None:
            log.info("token budget: data.%s is streamed; its prompts are checked batch by batch.", split)
            report[split] = {}
            continue
        lengths = builder.lengths(views)
        longest = max(range(len(views)), key=lengths.__getitem__)
        over = [(str(v.get("id")), n) for v, n in zip(views, lengths) if n > builder.max_length]
        truncated: list[str] = []
        if over and builder.overflow == "truncate_text":
            unfit = []
            for view, n in zip(views, lengths):
                if n > builder.max_length:
                    try:
                        builder.prompt_ids(view)
                        truncated.append(str(view.get("id")))
                    except ValueError:
                        unfit.append((str(view.get("id")), n))
            over = unfit
        if over:
            shown = ", ".join(f"{i!r} ({n} tokens)" for i, n in sorted(over, key=lambda o: -o[1])[:SHOWN])
            more = f" and {len(over) - SHOWN} more" if len(over) > SHOWN else ""
            remedy = ("their media, template and answer alone overflow; raise the budget or shorten the template"
                      if builder.overflow == "truncate_text"
                      else "raise the budget, shorten the template, or set overflow: truncate_text")
            raise ValueError(
                f"token budget: {len(over)} data.{split} samples are over the budget of {builder.max_length} "
                f"tokens (data.processor.prompt.max_length): {shown}{more}. Media tokens are never cut; {remedy}."
            )
        report[split] = {"samples": len(views), "longest_id": str(views[longest].get("id")),
                         "longest_tokens": lengths[longest], "budget": builder.max_length, "truncated": truncated}
        log.info("token budget: data.%s longest sample %r takes %d of %d tokens%s", split,
                 report[split]["longest_id"], lengths[longest], builder.max_length,
                 f"; text shortened in {len(truncated)} samples" if truncated else "")
    return report

"""Instruction tuning of an LLM-decoder model: LM loss on the answer, generation metrics.

Training minimises the LM loss of the answer tokens (the prompt, media placeholders and padding
are -100 in ``lm_labels``, see :mod:`mmtrain.components.lm.prompt`). At validation and test end:

- ``perplexity``: ``exp`` of the mean answer-token NLL over the split;
- greedy answers (``max_new_tokens``) from the prompts alone, scored against the reference
  answers with corpus ``bleu``, ``rouge_l`` and ``exact_match`` (:mod:`mmtrain.components.metrics.generation`);
- with ``choices`` (the label set), classification by generation: the answer is the choice the LM
  gives the highest probability (:func:`mmtrain.components.lm.generate.score_candidates`), ``choice_acc`` its
  accuracy against the reference, and ``choice_acc_chance`` that of always answering the most
  frequent reference.

Under DDP every metric covers the whole split: the torchmetrics states are reduced over ranks, and
the references behind ``choice_acc_chance`` are gathered from every rank, each sample once (by id:
the repeats ``DistributedSampler`` pads a split with are dropped).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mmtrain.models.processing import model_inputs
from mmtrain.components.lm.prompt import PromptBuilder
from mmtrain.components.metrics.generation import ExactMatch, GenerationMetrics, normalize_answer
from mmtrain.engine.tasks.base import OptimizerFactory, SchedulerFactory, TaskBase

GENERATION_KEYS = ("lm_prompt_ids", "lm_prompt_mask")


class GenerationTask(TaskBase):
    """Trains an ``LLMModel`` on prompt -> answer samples.

    Args:
        model: an ``LLMModel`` (``generate_answers`` / ``score_answers`` are used).
        optimizer, scheduler, param_groups, nonfinite: see :class:`TaskBase`.
        prompt: the processor's prompt builder (injected): its tokenizer decodes answers, and it
            writes ``choices`` as it writes answers (prefix, text, eos).
        label_names: the data's class names (injected; unused: instruction data is unlabelled).
        max_new_tokens: most tokens generated per answer.
        choices: answers to choose among (constrained answering); ``None`` skips it.
        generate_on_val: generate (and score choices) at validation too, not only at test.
        bleu_max_order: longest n-gram of BLEU (4; 1 for one-word answers, which have no 2-grams).
    """

    primary_metric = "choice_acc"  # when the data gives choices; else the report picks another
    higher_is_better = True
    monitor_metric = "exact_match"  # logged whether or not the data gives choices

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: OptimizerFactory,
        prompt: PromptBuilder,
        label_names: list[str] | None = None,
        scheduler: SchedulerFactory | None = None,
        param_groups: dict[str, dict[str, float]] | None = None,
        nonfinite: str = "abort",
        max_new_tokens: int = 8,
        choices: list[str] | None = None,
        generate_on_val: bool = True,
        bleu_max_order: int = 4,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler, param_groups=param_groups,
                         nonfinite=nonfinite)
        self.prompt = prompt
        self.tokenizer = prompt.tokenizer
        self.max_new_tokens = int(max_new_tokens)
        self.choices = [str(c) for c in choices] if choices else None
        self.generate_on_val = bool(generate_on_val)
        self.metrics = nn.ModuleDict({f"{s}_metrics": GenerationMetrics(bleu_max_order) for s in ("val", "test")})
        self.choice_acc = nn.ModuleDict({f"{s}_choice": ExactMatch() for s in ("val", "test")})
        self._choice_ids = [prompt.answer_ids({"target_text": c}) for c in self.choices] if self.choices else None
        #: ``(sample id, normalised reference)`` of this rank's scored samples, per split.
        self._references: dict[str, list[tuple[str, str]]] = {"val": [], "test": []}

    def step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        if batch.get("lm_labels") is None:
            raise ValueError(
                f"a {split} batch has no answers (lm_labels): instruction tuning needs samples with a "
                "target_text (e.g. data=instruction) and data.processor.prompt set."
            )
        inputs = {k: v for k, v in model_inputs(batch).items() if k not in (*GENERATION_KEYS, "labels")}
        out = self.model(**inputs)
        loss = out.lm_loss
        size = self.batch_size_of(batch)
        self.log_batch_value(f"{split}/loss", loss, batch_size=size, on_step=split == "train", prog_bar=True)
        if split != "train":
            self._evaluate(batch, out, split)
        return loss

    def _evaluate(self, batch: dict[str, Any], out: Any, split: str) -> None:
        metrics = self.metrics[f"{split}_metrics"]
        metrics.update_nll(out.lm_nll_sum.detach(), out.lm_token_count)
        if split.startswith("val") and (not self.generate_on_val or self.trainer.sanity_checking):
            return
        inputs = {k: v for k, v in model_inputs(batch).items() if k not in ("labels", "lm_labels")}
        answers = self.model.generate_answers(
            **inputs, max_new_tokens=self.max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        texts = [t.strip() for t in self.tokenizer.batch_decode(answers, skip_special_tokens=True)]
        metrics.update(texts, list(batch["target_texts"]))
        self._references[split] += [(str(i), normalize_answer(t)) for i, t in zip(batch["ids"], batch["target_texts"])]
        if self._choice_ids is not None:
            picked = self.model.score_answers(**inputs, candidates=self._choice_ids).argmax(dim=-1)
            self.choice_acc[f"{split}_choice"].update([self.choices[int(i)] for i in picked], list(batch["target_texts"]))

    def _finish(self, split: str) -> None:
        result = self.metrics[f"{split}_metrics"].compute()  # resets
        choice = self.choice_acc[f"{split}_choice"]
        # every rank's references: the condition below is the same on all ranks (compute() is a collective)
        refs = split_references(self._references[split]) if self._choice_ids is not None else {}
        if refs:
            result["choice_acc"] = float(choice.compute())
            result["choice_acc_chance"] = Counter(refs.values()).most_common(1)[0][1] / len(refs)
        choice.reset()
        self._references[split] = []
        self.results[split] = result
        self.log_split_results(split, result, prog_bar=("perplexity", "exact_match"))

    def _discard(self, split: str) -> None:
        super()._discard(split)  # the metrics' compute() resets them
        self._references[split] = []


def split_references(local: list[tuple[str, str]]) -> dict[str, str]:
    """``{sample id: reference}`` over every rank (a collective under ``torch.distributed``: call it on
    all ranks), each id once."""
    pairs = list(local)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[list[tuple[str, str]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, pairs)  # plain str pairs between ranks of this run
        pairs = [pair for part in gathered for pair in (part or [])]
    return dict(pairs)

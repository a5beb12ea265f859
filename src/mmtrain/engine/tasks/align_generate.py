"""Align, then generate: contrastive + Matryoshka + LM losses in one LLM-decoder model (edge glass's recipe).

The model (``model=llm`` with ``model.alignment``, :mod:`mmtrain.models.alignment`) embeds every encoder
slot into a shared space beside writing the prompt's pseudo-tokens. The objective is a weighted sum of
named terms, ``weights: {lm: 1.0, contrastive: 1.0, matryoshka: 0.05}``:

- ``lm``: the LM loss of the answer tokens (e.g. the caption, generated from the image's pseudo-tokens);
- ``contrastive``: the mean over slot pairs of each pair's InfoNCE at the full embedding width
  (global in-batch negatives under DDP, as task=contrastive);
- ``matryoshka``: the same pair losses on the nested widths below the full one (``matryoshka.dims``,
  default the projection's ``matryoshka_dims``; ``mode: sample`` draws one width a step).

Every term is logged (``train/loss_lm``, ``train/loss_contrastive``, ``train/loss_matryoshka``) beside
their weighted sum ``train/loss``. At val/test end both families of metrics are reported: the generation
task's (perplexity, BLEU / ROUGE-L / exact match of greedy answers, ``choice_acc``) and retrieval's
(Recall@K both ways per pair and width, ``r@1_mean``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mmtrain.components.lm.prompt import PromptBuilder
from mmtrain.components.losses.matryoshka import MatryoshkaLoss
from mmtrain.engine.tasks.alignment import LossSpec, PairAlignment
from mmtrain.engine.tasks.base import OptimizerFactory, SchedulerFactory
from mmtrain.engine.tasks.generation import GENERATION_KEYS, GenerationTask
from mmtrain.models.processing import model_inputs

TERMS = ("lm", "contrastive", "matryoshka")


class AlignGenerateTask(PairAlignment, GenerationTask):
    """Trains an ``LLMModel`` with alignment heads on ``weights``-weighted LM, contrastive and Matryoshka terms.

    Args:
        model, optimizer, prompt, label_names, scheduler, param_groups, nonfinite, max_new_tokens, choices,
            generate_on_val, bleu_max_order: see :class:`~mmtrain.engine.tasks.generation.GenerationTask`.
        weights: term -> weight (``lm``, ``contrastive``, ``matryoshka``); a term left out or at 0 is not
            trained (it is still logged).
        loss, pairs, eval_pairs, match_by, ks, gather_negatives, loss_scope: see
            :meth:`~mmtrain.engine.tasks.alignment.PairAlignment.setup_pairs`.
        matryoshka: ``{dims, mode: all|sample, weights, seed}`` of the ``matryoshka`` term (widths below the
            full one; ``dims`` null: the projection's nested widths).
    """

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
        weights: dict[str, float] | None = None,
        loss: LossSpec = None,
        pairs: Sequence[Sequence[str]] | None = None,
        eval_pairs: Sequence[Sequence[str]] | None = None,
        matryoshka: dict[str, Any] | None = None,
        match_by: str = "id",
        ks: Sequence[int] = (1, 5, 10),
        gather_negatives: bool = True,
        loss_scope: str = "global",
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, prompt=prompt, label_names=label_names,
                         scheduler=scheduler, param_groups=param_groups, nonfinite=nonfinite,
                         max_new_tokens=max_new_tokens, choices=choices, generate_on_val=generate_on_val,
                         bleu_max_order=bleu_max_order)
        if getattr(model, "align_projection", None) is None:
            raise ValueError("task=align_generate needs a model with alignment heads: model=llm with model.alignment "
                             "(a ProjectionHead spec), e.g. experiment=align_then_generate.")
        self.weights = check_weights(weights)
        self.setup_pairs(model, loss=loss, pairs=pairs, eval_pairs=eval_pairs, match_by=match_by, ks=ks,
                         gather_negatives=gather_negatives, loss_scope=loss_scope)
        options = dict(matryoshka or {})
        width = int(model.embedding_dim)
        dims = [d for d in options.pop("dims", None) or model.matryoshka_dims if int(d) < width]
        if self.weights["matryoshka"] > 0 and not dims:
            raise ValueError(f"task.weights.matryoshka is {self.weights['matryoshka']} but there are no widths below "
                             f"the full {width}: set model.alignment.matryoshka_dims or task.matryoshka.dims.")
        dims = self.check_dims(dims, "task.matryoshka.dims") if dims else []
        #: pair -> the pair's loss (the same module, so the same temperature) over the nested widths
        self.nested = nn.ModuleDict({name: MatryoshkaLoss(loss=pair_loss, dims=dims, **options)
                                     for name, pair_loss in self.losses.items()} if dims else {})

    def alignment_terms(self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                        mine: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``contrastive`` (and ``matryoshka``): the mean pair loss at the full (nested) widths; a zero that touches
        every embedding when no pair has two samples (DDP-safe)."""
        zero = sum(e.sum() for e in embeddings.values()) * 0.0
        terms = {"contrastive": self.pair_losses(embeddings, present, mine=mine)}
        if len(self.nested):
            terms["matryoshka"] = self.pair_losses(embeddings, present, self.nested, mine=mine)
        return {name: torch.stack(list(values.values())).mean() if values else zero for name, values in terms.items()}

    def train_loss(self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted alignment terms over the (global) batch (the LM term is the step's own)."""
        embeddings, present, mine = self.global_batch(embeddings, present)
        return sum(self.weights[name] * term for name, term in self.alignment_terms(embeddings, present, mine).items())

    def step(self, batch: dict[str, Any], split: str) -> torch.Tensor:
        if batch.get("lm_labels") is None:
            raise ValueError(f"a {split} batch has no answers (lm_labels): align-then-generate needs samples with a "
                             "target_text (e.g. data.train.answer_key) and data.processor.prompt set.")
        inputs = {k: v for k, v in model_inputs(batch).items() if k not in (*GENERATION_KEYS, "labels")}
        out = self.model(**inputs)
        embeddings, present, mine = out.embeddings, out.present, None
        if split == "train":
            embeddings, present, mine = self.global_batch(embeddings, present)
        terms = {"lm": out.lm_loss, **self.alignment_terms(embeddings, present, mine)}
        loss = sum(self.weights[name] * term for name, term in terms.items())
        size = self.batch_size_of(batch)
        for name, term in terms.items():
            self.log_batch_value(f"{split}/loss_{name}", term, batch_size=size)
        self.log_batch_value(f"{split}/loss", loss, batch_size=size, on_step=split == "train", prog_bar=True)
        if split != "train":
            self._evaluate(batch, out, split)
            self._collected[split].append(self._record(batch, out))
        return loss

    def _finish(self, split: str) -> None:
        super()._finish(split)  # generation metrics: self.results[split], logged
        retrieval = self.finish_retrieval(split)
        self.results[split].update(retrieval)
        self.log_split_results(split, retrieval, prog_bar=("r@1_mean",))


def check_weights(weights: dict[str, float] | None) -> dict[str, float]:
    """Every term's weight (``lm`` and ``contrastive`` 1, ``matryoshka`` 0 unless given); unknown names and
    negative or all-zero weights are refused."""
    given = {str(k): float(v) for k, v in (weights or {}).items()}
    unknown = sorted(set(given) - set(TERMS))
    if unknown:
        raise ValueError(f"task.weights {unknown}: unknown terms; the terms are {list(TERMS)}.")
    full = {"lm": 1.0, "contrastive": 1.0, "matryoshka": 0.0} | given
    if any(w < 0 for w in full.values()) or not any(full.values()):
        raise ValueError(f"task.weights {full}: weights must be non-negative and not all zero.")
    return full

"""Text-generation metrics: corpus BLEU-4, ROUGE-L F1, exact match and token perplexity.

Every metric is a ``torchmetrics.Metric`` whose state is reduced across batches AND across DDP
ranks by torchmetrics (``compute`` syncs when ``torch.distributed`` is initialised; ``merge_state``
combines metrics updated on different shards):

* :class:`CorpusBLEU` - corpus BLEU up to 4-grams (uniform weights, brevity penalty over the whole
  corpus; clipped n-gram counts and lengths are ``sum`` states, so the score is the corpus score, not
  a mean of sentence scores). **No smoothing** (Papineni et al. 2002; = ``torchmetrics`` ``BLEUScore``
  with ``smooth=False``, NLTK ``corpus_bleu`` without smoothing, sacreBLEU ``smooth_method="none"``
  with ``tokenize="none"`` + ``lowercase``): a corpus without a single matching 4-gram scores 0.
  (torchmetrics' ``smooth=True`` adds one to the 2..4-gram counts but returns 0 anyway as soon as one
  order has no match, so it would not rescue that case; at corpus level zero 4-gram matches mean the
  output is degenerate and 0 is the honest value.)
* :class:`RougeL` - ROUGE-L F1 (``2PR / (P + R)`` with ``P = LCS / |pred|``, ``R = LCS / |ref|``)
  per sample, averaged over samples; with several references the best one counts. Per-sample
  scores are ``cat`` states (gathered across ranks).
* :class:`ExactMatch` - share of predictions equal to a reference after :func:`normalize_answer`.
* :class:`TokenPerplexity` - ``exp(total_nll / total_tokens)`` from summed token NLL and token
  counts (float64 ``sum`` states; :func:`summed_token_nll` gets both from logits and labels).

Normalisation. BLEU and ROUGE-L compare the tokens of :func:`overlap_tokens`: the text lowercased
and split on whitespace (punctuation stays attached to its word: ``"mat."`` != ``"mat"``). Exact
match uses :func:`normalize_answer`: lowercased, whitespace collapsed to single spaces, trailing
punctuation (``string.punctuation``) and surrounding whitespace stripped (``"Seven."`` == ``"seven"``,
``"U.S."`` == ``"u.s"``; inner punctuation is kept).

:class:`GenerationMetrics` bundles the four for a split, like :class:`ClassificationMetrics`.
"""

from __future__ import annotations

import string
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.text import BLEUScore, ROUGEScore
from torchmetrics.utilities.data import dim_zero_cat

Targets = Sequence[str | Sequence[str]]


def normalize_text(text: str) -> str:
    """Lowercased, whitespace runs collapsed to one space, stripped (BLEU / ROUGE-L normalisation)."""
    return " ".join(text.lower().split())


def overlap_tokens(text: str) -> list[str]:
    """The tokens BLEU and ROUGE-L compare: ``normalize_text(text).split(" ")`` (``[]`` for blank text)."""
    return normalize_text(text).split()


def normalize_answer(text: str) -> str:
    """Exact-match normalisation: :func:`normalize_text`, then trailing punctuation and spaces removed."""
    return normalize_text(text).rstrip(string.punctuation + " ")


def _reference_lists(preds: Sequence[str], targets: Targets) -> list[list[str]]:
    """``targets`` as one non-empty list of reference strings per prediction."""
    if isinstance(preds, str) or isinstance(targets, str):
        raise TypeError("pass lists: preds [N] strings and targets [N] strings (or [N] lists of references).")
    if len(preds) != len(targets):
        raise ValueError(f"got {len(preds)} predictions but {len(targets)} targets; pass one target per prediction.")
    references = [[target] if isinstance(target, str) else list(target) for target in targets]
    for index, refs in enumerate(references):
        if not refs or not all(isinstance(ref, str) for ref in refs):
            raise ValueError(f"target {index} must be a string or a non-empty list of strings, got {refs!r}.")
    return references


class CorpusBLEU(BLEUScore):
    """Corpus BLEU-``max_order`` (default 4) on lowercased whitespace tokens, no smoothing (see the
    module docstring). One-word answers have no 2-grams: score them with ``max_order=1``.

    ``update(preds [N] str, targets [N] str or [N] lists of reference str)``; ``compute()`` -> scalar
    tensor in ``[0, 1]``.
    """

    full_state_update = False  # sum states: batches/ranks combine without re-running update

    def __init__(self, max_order: int = 4, **kwargs: Any) -> None:
        if not 1 <= int(max_order) <= 4:
            raise ValueError(f"BLEU max_order must be 1..4, got {max_order}.")
        super().__init__(n_gram=int(max_order), smooth=False, **kwargs)

    def update(self, preds: Sequence[str], targets: Targets) -> None:  # type: ignore[override]
        references = _reference_lists(preds, targets)
        super().update([normalize_text(p) for p in preds], [[normalize_text(r) for r in refs] for refs in references])


class RougeL(ROUGEScore):
    """ROUGE-L F1 on lowercased whitespace tokens, averaged over samples (best of several references).

    ``update(preds [N] str, targets [N] str or [N] lists of reference str)``; ``compute()`` -> scalar
    tensor in ``[0, 1]`` (NaN before any update). No stemming, so no NLTK is needed.
    """

    full_state_update = False  # per-sample ``cat`` states

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(rouge_keys="rougeL", accumulate="best", normalizer=normalize_text, **kwargs)

    def update(self, preds: Sequence[str], targets: Targets) -> None:  # type: ignore[override]
        super().update(list(preds), _reference_lists(preds, targets))

    def compute(self) -> torch.Tensor:  # type: ignore[override]
        scores = self.rougeL_fmeasure  # list of 0-d (local) or 1-d (gathered across ranks) tensors
        if not scores:
            return torch.tensor(float("nan"))
        return dim_zero_cat(scores).float().mean()


class ExactMatch(Metric):
    """Share of predictions equal to one of their references after :func:`normalize_answer`.

    ``update(preds [N] str, targets [N] str or [N] lists of reference str)``; ``compute()`` -> scalar
    tensor in ``[0, 1]`` (NaN before any update).
    """

    full_state_update = False
    higher_is_better = True
    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], targets: Targets) -> None:
        references = _reference_lists(preds, targets)
        hits = sum(
            normalize_answer(pred) in {normalize_answer(ref) for ref in refs}
            for pred, refs in zip(preds, references, strict=True)
        )
        self.correct += hits
        self.total += len(preds)

    def compute(self) -> torch.Tensor:
        if int(self.total) == 0:
            return torch.tensor(float("nan"))
        return self.correct.double() / self.total


def summed_token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL and the number of scored tokens (the causal-LM label convention).

    Args:
        logits: ``[B, L, V]``; position ``t`` predicts token ``t + 1``.
        labels: ``[B, L]`` aligned with the inputs (shifted here, as inside Hugging Face LMs); -100 ignored.

    Returns:
        ``(nll_sum, count)``: float64 and long scalar tensors (natural log).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [B, L, V] and labels [B, L] of the same B, L; got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}."
        )
    targets = labels[:, 1:].reshape(-1)
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).double()
    nll = F.cross_entropy(flat, targets.to(logits.device), ignore_index=-100, reduction="sum")
    return nll, (targets != -100).sum()


class TokenPerplexity(Metric):
    """``exp(total_nll / total_tokens)`` over everything added (batches and ranks).

    ``update(nll_sum, token_count)``: a batch's summed token NLL (natural log) and how many tokens it
    covers (see :func:`summed_token_nll`). ``compute()`` -> float64 scalar tensor (NaN before any token).
    """

    full_state_update = False
    higher_is_better = False
    nll_sum: torch.Tensor
    token_count: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("token_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor | float, token_count: torch.Tensor | int) -> None:
        count = int(token_count)
        if count < 0:
            raise ValueError(f"token_count must be >= 0, got {count}.")
        nll = torch.as_tensor(nll_sum, dtype=torch.float64).detach()
        if nll.numel() != 1:
            raise ValueError(f"nll_sum must be a scalar (the batch's summed NLL), got shape {tuple(nll.shape)}.")
        self.nll_sum += nll.reshape(()).to(self.nll_sum.device)
        self.token_count += count

    def compute(self) -> torch.Tensor:
        if int(self.token_count) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return torch.exp(self.nll_sum / self.token_count)


class GenerationMetrics(nn.Module):
    """BLEU-4, ROUGE-L F1, exact match and perplexity of one split; :meth:`compute` returns floats.

    Use from a LightningModule: :meth:`update` with decoded predictions and reference strings,
    :meth:`update_nll` with :func:`summed_token_nll` of the teacher-forced logits; :meth:`compute` at
    epoch end (synced across DDP ranks by torchmetrics) returns the dict and resets.
    """

    def __init__(self, bleu_max_order: int = 4) -> None:
        super().__init__()
        self.bleu = CorpusBLEU(bleu_max_order)
        self.rouge_l = RougeL()
        self.exact_match = ExactMatch()
        self.perplexity = TokenPerplexity()

    def update(self, preds: Sequence[str], targets: Targets) -> None:
        """Add decoded predictions ``[N]`` and their references (``[N]`` str or ``[N]`` lists of str)."""
        for metric in (self.bleu, self.rouge_l, self.exact_match):
            metric.update(preds, targets)

    def update_nll(self, nll_sum: torch.Tensor | float, token_count: torch.Tensor | int) -> None:
        """Add a batch's summed token NLL and token count (for perplexity)."""
        self.perplexity.update(nll_sum, token_count)

    def compute(self) -> dict[str, float]:
        """``{"bleu", "rouge_l", "exact_match", "perplexity"}``; then resets.

        Without data: NaN (BLEU: 0.0). Every metric is computed on every call, so all DDP ranks join
        the same sync collectives even when one rank saw no batch of some kind.
        """
        metrics = {"bleu": self.bleu, "rouge_l": self.rouge_l, "exact_match": self.exact_match,
                   "perplexity": self.perplexity}
        result = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*was called before the ``update`` method.*")
            for name, metric in metrics.items():
                result[name] = float(metric.compute())
                metric.reset()
        return result

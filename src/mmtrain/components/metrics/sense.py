"""Which way a metric is better, from its name, where no task declares it (a hand-named checkpoint
monitor, a report's curve of a run written before tasks declared their primary metric)."""

from __future__ import annotations

#: Name fragments of metrics where smaller is better.
LOWER_IS_BETTER = ("loss", "perplexity", "error", "wer", "cer", "mae", "mse")


def lower_is_better(name: str) -> bool:
    """Whether smaller values of metric ``name`` (``val/rmse``, ``loss``...) are better."""
    return any(word in name.lower() for word in LOWER_IS_BETTER)

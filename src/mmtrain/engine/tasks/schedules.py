"""Learning-rate schedules that need the run's step count, built from ``_partial_`` configs."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR
from transformers.optimization import get_cosine_schedule_with_warmup


def cosine_with_warmup(
    optimizer: Optimizer, *, total_steps: int, warmup_ratio: float = 0.1, num_cycles: float = 0.5
) -> LambdaLR:
    """Linear warm-up over ``warmup_ratio * total_steps``, then cosine decay (transformers' schedule)."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"task.scheduler.warmup_ratio must be in [0, 1), got {warmup_ratio}")
    warmup = int(round(warmup_ratio * total_steps))
    return get_cosine_schedule_with_warmup(optimizer, warmup, max(total_steps, 1), num_cycles)

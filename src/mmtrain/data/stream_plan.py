"""Where a streamed epoch's rows lie, and where a resumed pass starts without reading what came before.

A stream (``data=parquet``) gives each DataLoader worker a contiguous block of whole batches of the rank's rows;
the DataLoader takes one batch from each worker in turn (worker 0, 1, ..., skipping workers that have finished).
So after ``done`` batches of an epoch, each worker has delivered a count this module computes, and a resumed pass
gives worker ``i`` the role of the worker that delivers batch ``done`` + ``i`` positions on in that cycle, starting
past what it delivered: the same batches in the same order, with no row read before the position.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class StreamState:
    """The state a streamed dataset keeps for its passes: the epoch (in shared memory, so persistent workers see
    :meth:`set_epoch`), its rank and world size (``world_size``/``rank`` attributes, else ``torch.distributed``'s)
    and where its next pass starts (:meth:`resume_at`). A subclass sets ``world_size``, ``rank`` and ``batch_size``
    and calls :meth:`init_stream_state` in its ``__init__``."""

    world_size: int | None
    rank: int | None
    batch_size: int | None

    def init_stream_state(self) -> None:
        self._resume: tuple[int, int] | None = None  # (epoch, batches done): where the next pass starts
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next pass uses."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def _rank(self) -> tuple[int, int]:
        if self.world_size is not None:
            return int(self.rank or 0), int(self.world_size)
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def resume_at(self, epoch: int | None, batches: int = 0) -> None:
        """Start the next pass (of ``epoch``) after its first ``batches`` batches, by plan (needs ``batch_size``; set
        before the loader starts its workers). ``None``: a whole pass."""
        if epoch is not None and not self.batch_size:
            raise ValueError(f"{type(self).__name__}: resume_at needs batch_size (the loader's)")
        self._resume = None if epoch is None else (int(epoch), int(batches))

    def take_resume(self) -> tuple[int, int] | None:
        """The resume point for this pass, cleared: one pass only (persistent workers keep this copy)."""
        resume, self._resume = self._resume, None
        return resume


def cut(slices: list[tuple[Any, int, int]], start: int, stop: int) -> list[tuple[Any, int, int]]:
    """Rows ``[start, stop)`` of the stream that ``(unit, low, high)`` slices make, as slices again."""
    out, offset = [], 0
    for unit, low, high in slices:
        first, last = max(start, offset), min(stop, offset + high - low)
        if first < last:
            out.append((unit, low + first - offset, low + last - offset))
        offset += high - low
        if offset >= stop:
            break
    return out


def worker_block(rows: int, worker: int, workers: int, batch_size: int | None) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a rank's ``rows`` that worker ``worker`` of ``workers`` yields: whole batches
    with ``batch_size`` (the last one partial; no worker adds a batch of its own), else near-equal rows."""
    if batch_size:
        batches = -(-rows // batch_size)
        first, last = batches * worker // workers, batches * (worker + 1) // workers
        return min(rows, first * batch_size), min(rows, last * batch_size)
    share, extra = divmod(rows, workers)
    start = worker * share + min(worker, extra)
    return start, start + share + (1 if worker < extra else 0)


def delivered(batches: list[int], done: int) -> tuple[list[int], int]:
    """Batches each worker had delivered after ``done`` batches of the round-robin, and the worker next in turn.

    Args:
        batches: batches each worker yields in the epoch (its block).
        done: batches the trainer finished, ``0 <= done <= sum(batches)``.

    Returns:
        ``(delivered per worker, next worker)``; the next worker is ``0`` once every batch is delivered.
    """
    if not 0 <= done <= sum(batches):
        raise ValueError(f"position {done} is outside an epoch of {sum(batches)} batches")
    given = [0] * len(batches)
    left = done
    while left:
        active = [w for w, n in enumerate(batches) if given[w] < n]
        rounds = min(min(batches[w] - given[w] for w in active), left // len(active))
        if rounds:  # whole rounds over the workers still going
            for w in active:
                given[w] += rounds
            left -= rounds * len(active)
            continue
        for w in active[:left]:  # a part of one round: every active worker has a batch left
            given[w] += 1
        return given, active[left]
    active = [w for w, n in enumerate(batches) if given[w] < n]
    return given, active[0] if active else 0

"""Ending a test's gloo rank without the interpreter-exit race of torch's gloo backend."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import torch.distributed as dist


def end_rank() -> NoReturn:
    """Wait for every rank, destroy the process group and leave the process without finalizing Python.

    Call it last, after the rank wrote its results. gloo's worker thread releases a finished
    collective's work a moment after the caller's ``wait`` returned. Freeing the tensors that work
    holds (any tensor Python created: ``all_reduce``'s input, ``all_gather_object``'s buffers, or
    the earlier works a barrier keeps) needs the GIL. If the main thread has begun finalizing the
    interpreter by then, the thread is made to exit and the rank dies with "terminate called without
    an active exception" (SIGABRT). Measured here: about 1 run in 8 under a loaded suite, and nearly
    every run under gdb. ``destroy_process_group`` does not join those threads. Leaving through
    ``os._exit`` skips the finalization, so no late release can meet it.
    """
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now (for a test's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def report_and_end(out_dir: str, rank: int, result: dict[str, Any]) -> NoReturn:
    """Write this rank's ``result`` to ``<out_dir>/rank<rank>.json`` and :func:`end_rank`."""
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    end_rank()


def run_two_ranks(worker: Callable[..., None], out_dir: Path) -> list[dict[str, Any]]:
    """Run ``worker(rank, world, port, out_dir)`` on 2 spawned gloo processes; each rank's reported result."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(2, free_port(), str(out_dir)), nprocs=2, join=True)
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in (0, 1)]

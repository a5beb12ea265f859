"""Which process of a distributed job this is, from the launcher's environment (no torch import).

Launchers: Lightning's own ``ddp`` launcher (it re-runs the command with ``LOCAL_RANK`` / ``NODE_RANK``),
``torchrun`` (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``GROUP_RANK``) and SLURM's ``srun`` (``SLURM_PROCID``,
``SLURM_NTASKS``). The global rank decides what one process of the whole job does (print the results,
write the run directory's files); on several nodes ``LOCAL_RANK`` 0 is one process per node.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def global_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's rank in the whole job: ``RANK`` (torchrun), else ``SLURM_PROCID`` (srun with several
    tasks), else 0 for the process the user started and > 0 for one Lightning's launcher started."""
    env = os.environ if env is None else env
    if env.get("RANK"):
        return int(env["RANK"])
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1 and env.get("SLURM_PROCID"):
        return int(env["SLURM_PROCID"])
    local, node = int(env.get("LOCAL_RANK", "0") or 0), int(env.get("NODE_RANK", "0") or 0)
    return local if node == 0 else node * 1_000 + local  # non-zero off node 0 (the exact number is unused)


def launched_world(env: Mapping[str, str] | None = None) -> int:
    """How many processes an external launcher started for this job (``WORLD_SIZE`` of torchrun,
    ``SLURM_NTASKS`` of srun); 1 when the process was started alone (Lightning's launcher adds its own later)."""
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE") and env.get("RANK"):
        return int(env["WORLD_SIZE"])
    return max(1, int(env.get("SLURM_NTASKS", "1") or 1)) if env.get("SLURM_PROCID") else 1

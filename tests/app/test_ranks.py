"""Which process of a job this is, from each launcher's environment (mmtrain.core.ranks)."""

from __future__ import annotations

from mmtrain.core.ranks import global_rank, launched_world


def test_the_global_rank_of_each_launcher() -> None:
    assert global_rank({}) == 0 and launched_world({}) == 1  # started alone
    assert global_rank({"LOCAL_RANK": "1"}) == 1  # a process Lightning's ddp launcher started on this node
    assert global_rank({"LOCAL_RANK": "0", "NODE_RANK": "1"}) != 0  # the first process of another node
    torchrun = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "GROUP_RANK": "1"}
    assert global_rank(torchrun) == 3 and launched_world(torchrun) == 4
    assert global_rank({**torchrun, "RANK": "0", "LOCAL_RANK": "0"}) == 0
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert global_rank(srun) == 5 and launched_world(srun) == 8
    assert global_rank({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == 0  # an interactive single-task allocation

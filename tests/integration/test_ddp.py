"""DDP on CPU as a user runs it: ``mmtrain train ... trainer=ddp_cpu`` (2 gloo processes) against one process.

The same command is trained (a) in one process with ``data.batch_size=2B`` and (b) in two with
``data.batch_size=B``: the global batches hold the same samples (``EpochSampler`` shards one per-epoch
permutation over ranks), so both runs take the same optimizer steps. Randomness that depends on the
local batch or the rank (augmentation, modality dropout, dropout) is switched off.

Then the pieces that make results global, on two real gloo ranks: the contrastive loss on gathered
embeddings (its gradient equals one process's), the skip-ledger sums, the generation references.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from _dist import free_port, report_and_end, run_two_ranks
from _multiproc import (BASE, DDP, FSDP2, ONE, PER_RANK_BATCH, SIGKILLED, TIMES, WEIGHT_TOLERANCE, killed_and_resumed,
                        metrics, mmtrain)
from torch import nn
from torch.utils.data import DistributedSampler

from mmtrain.components.losses.contrastive import SymmetricInfoNCE
from mmtrain.engine.tasks.classification import ClassificationTask
from mmtrain.engine.tasks.contrastive import gather_rows
from mmtrain.engine.tasks.generation import split_references
from mmtrain.engine.callbacks.faults import compare_runs, final_checkpoint, kill_overrides
from mmtrain.engine.callbacks.ledger import padding_seen, sum_over_ranks
from mmtrain.engine.callbacks.ranks import SameRunDir
from mmtrain.models.multimodal import MultimodalModel

#: What each run of the `runs` fixture printed.
OUTPUTS: dict[str, str] = {}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose data/ holds the tiny demo set (built by the first run)."""
    return tmp_path_factory.mktemp("ddp")


@pytest.fixture(scope="module")
def runs(workspace: Path) -> dict[str, Path]:
    out = {}
    for name, extra in (("one_process", ONE), ("two_processes", DDP)):
        run_dir = workspace / name
        done = mmtrain(*BASE, *extra, f"run_dir={run_dir}", cwd=workspace, name=name)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        out[name] = run_dir
        OUTPUTS[name] = done.stdout + done.stderr
    return out


def test_only_the_first_process_prints_the_results(runs: dict[str, Path]) -> None:
    # the second rank runs the same command (Lightning's ddp launcher) and shares stdout
    lines = OUTPUTS["two_processes"].splitlines()
    assert sum(line.startswith("run directory:") for line in lines) == 1
    assert OUTPUTS["two_processes"].count("┃ metric ") == 1  # one metric table


@pytest.mark.slow
def test_two_nodes_on_localhost_train_as_one_node_with_two_processes(workspace: Path, runs: dict[str, Path]) -> None:
    # two torchrun launches, node ranks 0 and 1, one process each, meeting at a rendezvous on 127.0.0.1
    run_dir, port = workspace / "two_nodes", free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    logs = [workspace / f"node{node}.log" for node in (0, 1)]  # files, not pipes: a full pipe would stall a rank
    launches = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}",
         "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "mmtrain", "train", *BASE, *DDP,
         "trainer.devices=1", "trainer.num_nodes=2", f"run_dir={run_dir}"],
        cwd=workspace, env=env, stdout=logs[node].open("w"), stderr=subprocess.STDOUT) for node in (0, 1)]
    for launch in launches:
        launch.wait(timeout=300)
    outputs = [log.read_text() for log in logs]
    assert [launch.returncode for launch in launches] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert compare_runs(runs["two_processes"], run_dir) == []  # the same job as 1 node x 2 processes
    assert [out.count("┃ metric ") for out in outputs] == [1, 0]  # only the job's rank 0 prints the results
    assert (run_dir / "export" / "config.json").is_file() and not (workspace / "outputs").exists()


@pytest.mark.slow
@pytest.mark.long
def test_fsdp2_trains_like_ddp_and_exports_unsharded(workspace: Path, runs: dict[str, Path]) -> None:
    # FSDP2 (ModelParallelStrategy + fully_shard) on 2 gloo processes: parameters sharded over the ranks. Its kill -9
    # and resume: tests/integration/test_sharded_engines.py (sharded checkpoints; full-state ones by hand)
    sharded = workspace / "fsdp2"
    done = mmtrain(*BASE, *FSDP2, f"run_dir={sharded}", cwd=workspace, name="fsdp2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "sharded over 2 ranks" in done.stdout + done.stderr
    reference, mine = (torch.load(final_checkpoint(r), map_location="cpu", weights_only=True)
                       for r in (runs["two_processes"], sharded))
    assert reference["state_dict"].keys() == mine["state_dict"].keys()  # full (gathered) state dicts
    worst = max(float((v.double() - mine["state_dict"][k].double()).abs().max())
                for k, v in reference["state_dict"].items() if v.is_floating_point())
    assert worst <= WEIGHT_TOLERANCE, worst  # the same training as DDP, up to float summation order
    exported = MultimodalModel.from_pretrained(sharded / "export")  # an unsharded export, manifest-verified
    assert exported.state_dict().keys() == {k.removeprefix("model."): 0 for k in mine["state_dict"]}.keys()



def test_a_process_of_a_torchrun_job_needs_the_shared_run_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    from mmtrain.app.commands.train import make_run_dir

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.delenv("MMTRAIN_RUN_DIR", raising=False)
    with pytest.raises(ValueError, match="one of 4 processes torchrun / srun started: give every one run_dir="):
        make_run_dir(OmegaConf.create({"output_root": "outputs", "name": "x"}))


def test_epoch_values_are_synchronised_across_processes(runs: dict[str, Path]) -> None:
    # losses are all-reduced (sync_dist), split results logged as the global floats they are: Lightning
    # has no unsynchronised epoch-level value to warn about
    assert "sync_dist=True" not in OUTPUTS["two_processes"], OUTPUTS["two_processes"][-3000:]


@pytest.mark.slow
def test_two_processes_match_one_process_with_the_same_global_batch(runs: dict[str, Path]) -> None:
    one, two = (torch.load(final_checkpoint(runs[n]), map_location="cpu", weights_only=True)
                for n in ("one_process", "two_processes"))
    assert one["global_step"] == two["global_step"] == 2 * 16 // (2 * PER_RANK_BATCH)
    assert one["state_dict"].keys() == two["state_dict"].keys()
    diffs = {k: float((v.double() - two["state_dict"][k].double()).abs().max()) for k, v in one["state_dict"].items()
             if v.is_floating_point()}
    worst = max(diffs, key=diffs.get)
    print(f"\nweights: max |1 process - 2 processes| = {diffs[worst]:.3g} ({worst}); wall times {TIMES}")
    assert diffs[worst] <= WEIGHT_TOLERANCE, (worst, diffs[worst])
    first, second = metrics(runs["one_process"]), metrics(runs["two_processes"])
    for split in ("val", "test"):
        print(f"{split}: acc {first[split]['acc']:.4f} vs {second[split]['acc']:.4f}, "
              f"macro_f1 {first[split]['macro_f1']:.4f} vs {second[split]['macro_f1']:.4f}")
        assert second[split]["confusion"] == first[split]["confusion"], split
        assert second[split]["acc"] == pytest.approx(first[split]["acc"], abs=1e-6)
        assert second[split]["macro_f1"] == pytest.approx(first[split]["macro_f1"], abs=1e-6)


@pytest.mark.slow
def test_metrics_and_skip_ledger_cover_every_sample_not_one_rank(workspace: Path, runs: dict[str, Path]) -> None:
    counts = json.loads((workspace / "data" / "spoken_digits" / "manifest.json").read_text())["counts"]
    size = {split: counts[split]["segments"] for split in ("train", "val", "test")}
    assert size == {"train": 16, "val": 8, "test": 8}
    passes = {"train": 2, "val": 3, "test": 1}  # 2 epochs; val after each + the final re-score of the best
    expected = {split: {"seen": passes[split] * size[split], "skipped": 0} for split in size}
    for name in ("one_process", "two_processes"):
        result = metrics(runs[name])
        assert result["skipped"] == expected, name
        for split in ("val", "test"):  # the confusion matrix counts each sample of the split once
            assert sum(map(sum, result[split]["confusion"])) == size[split], (name, split)


@pytest.mark.slow
def test_resume_with_another_world_size_is_refused(workspace: Path) -> None:
    run_dir = workspace / "world_one"
    killed = mmtrain(*BASE, *ONE, *kill_overrides(5), f"run_dir={run_dir}", cwd=workspace, name="killed_1_process")
    assert killed.returncode == SIGKILLED, killed.stderr[-3000:]
    refused = mmtrain(*BASE, *ONE, "trainer=ddp_cpu", f"resume={run_dir}", cwd=workspace, name="refused_resume_ddp")
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output[-3000:]
    assert "cannot resume exactly" in output and "world size (trainer.devices x nodes) was 1, now 2" in output
    assert "Traceback" not in output, output[-3000:]


@pytest.mark.slow
def test_ddp_resume_after_sigkill_is_bit_identical(workspace: Path, runs: dict[str, Path]) -> None:
    run_dir = killed_and_resumed(workspace, DDP, "ddp_killed")
    assert compare_runs(runs["two_processes"], run_dir) == []
    print(f"\nwall times (s): {TIMES}")


GLOBAL_ROWS = 6
SPLITS = {"uneven": [4, 2], "one_rank_empty": [6, 0]}  # rows per rank of a 6-sample global batch


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(GLOBAL_ROWS, 4, generator=generator), torch.randn(GLOBAL_ROWS, 4, generator=generator)


def _collectives_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    result: dict = {}
    for name, counts in SPLITS.items():
        a, b = _batch()
        loss_fn = SymmetricInfoNCE()
        start = sum(counts[:rank])
        mine = slice(start, start + counts[rank])
        local_a, local_b = a[mine].clone().requires_grad_(True), b[mine].clone().requires_grad_(True)
        loss = loss_fn(gather_rows(local_a, counts), gather_rows(local_b, counts))
        loss.backward()
        temperature = loss_fn.log_temperature.grad.clone()
        dist.all_reduce(temperature)  # DDP's gradient mean over ranks
        # Embedding gradients reach the parameters below them, whose gradients DDP divides by world.
        result[name] = {"loss": loss.item(), "rows": [start, start + counts[rank]],
                        "grad_a": (local_a.grad / world).tolist(), "grad_b": (local_b.grad / world).tolist(),
                        "temperature": (temperature / world).item()}
        # loss_scope local: this rank's rows as queries against the gathered gallery, world x its share
        loss_fn = SymmetricInfoNCE()
        local_a, local_b = a[mine].clone().requires_grad_(True), b[mine].clone().requires_grad_(True)
        queries = torch.arange(start, start + counts[rank])
        share = world * loss_fn(gather_rows(local_a, counts), gather_rows(local_b, counts), queries=queries)
        share.backward()
        temperature = loss_fn.log_temperature.grad.clone()
        dist.all_reduce(temperature)
        mean = share.detach().clone()
        dist.all_reduce(mean)  # what DDP's logged mean over ranks shows
        result[f"{name}_local"] = {"loss": mean.item() / world, "rows": [start, start + counts[rank]],
                                   "grad_a": (local_a.grad / world).tolist(),
                                   "grad_b": (local_b.grad / world).tolist(), "temperature": (temperature / world).item()}
    result["ledger"] = sum_over_ranks([rank + 1, 10 * rank])
    trainer = SimpleNamespace(world_size=world)
    SameRunDir(Path(out_dir) / "run").setup(trainer, None, "fit")  # the same folder on every rank: no error
    try:
        SameRunDir(Path(out_dir) / f"run{rank}").setup(trainer, None, "fit")
        result["run_dirs"] = "accepted"
    except ValueError as err:
        result["run_dirs"] = str(err)
    ids = range(rank, 5, world)  # rank 0: 0, 2, 4; rank 1: 1, 3 and a padding repeat of sample 0
    references = [(f"s{i}", "no" if i % 3 == 0 else "yes") for i in ids] + ([("s0", "no")] if rank == 1 else [])
    result["references"] = split_references(references)
    report_and_end(out_dir, rank, result)


@pytest.mark.slow  # two interpreters importing torch + lightning (~10 s on 2 busy cores)
def test_gathered_results_on_two_gloo_ranks_equal_one_process(tmp_path: Path) -> None:
    ranks = run_two_ranks(_collectives_worker, tmp_path)
    a, b = (t.requires_grad_(True) for t in _batch())
    loss_fn = SymmetricInfoNCE()
    loss = loss_fn(a, b)  # one process, the whole batch
    loss.backward()
    for name in [*SPLITS, *(f"{s}_local" for s in SPLITS)]:
        for result in (r[name] for r in ranks):
            low, high = result["rows"]
            assert result["loss"] == pytest.approx(loss.item(), abs=1e-6), name  # global in-batch negatives
            assert torch.allclose(torch.tensor(result["grad_a"]).reshape(-1, 4), a.grad[low:high], atol=1e-6)
            assert torch.allclose(torch.tensor(result["grad_b"]).reshape(-1, 4), b.grad[low:high], atol=1e-6)
            assert result["temperature"] == pytest.approx(loss_fn.log_temperature.grad.item(), abs=1e-6)
    # skip-ledger counts summed over ranks; generation references: every rank's, each sample once
    assert [r["ledger"] for r in ranks] == [[3, 10], [3, 10]]
    for r in ranks:  # ranks given different run directories all stop, naming each rank's
        assert "write to different run directories (rank 0: " in r["run_dirs"] and "run1" in r["run_dirs"]
    expected = {"s0": "no", "s1": "yes", "s2": "yes", "s3": "no", "s4": "yes"}
    assert [r["references"] for r in ranks] == [expected, expected]


def test_distributed_sampler_padding_is_not_counted_as_seen() -> None:
    # 13 samples over 2 ranks: DistributedSampler gives each 7, rank 1's last one repeats sample 0.
    samplers = [DistributedSampler(range(13), num_replicas=2, rank=r, shuffle=False) for r in (0, 1)]
    assert [list(s)[-1] for s in samplers] == [12, 0]
    assert [padding_seen(s, 7) for s in samplers] == [0, 1]
    assert padding_seen(samplers[1], 6) == 0, "the repeat comes last: a pass cut short may not reach it"
    assert padding_seen(DistributedSampler(range(12), num_replicas=2, rank=1), 6) == 0
    assert padding_seen(None, 5) == 0


def test_an_all_skipped_batch_still_joins_the_gradient_all_reduce_under_ddp() -> None:
    task = ClassificationTask(model=nn.Linear(3, 2), optimizer=partial(torch.optim.SGD, lr=0.1), label_names=["a", "b"])
    assert task.training_step({"ids": []}, 0) is None  # one process: no backward, no update
    task._trainer = SimpleNamespace(world_size=2)  # what a DDP rank's module sees
    loss = task.training_step({"ids": []}, 0)
    assert loss is not None and float(loss) == 0.0
    loss.backward()  # under DDP this backward is what all-reduces every gradient bucket
    grads = [p.grad for p in task.parameters() if p.requires_grad]
    assert grads and all(g is not None and not g.any() for g in grads)

"""A weighted mixture of train sources (mmtrain.data.mixture): draws by weight, a pure function of (seed, epoch),
every sample of an under-drawn source seen over the epochs, ids naming their source, named errors; and the demo
trained from a 2-source mixture with 2 data workers and validated on 2 named sources (metrics per source and
their mean), killed (-9) mid-epoch and resumed, bit-identical."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from _cli import run_mmtrain
from _multiproc import SIGKILLED, killed_ddp_run

from mmtrain.data.mixture import MixtureDataset
from mmtrain.engine.callbacks.faults import compare_runs, kill_overrides


class Numbers:
    """A map-style source of ``{"id": "<n>", "label": 0}`` samples."""

    label_names = ["only"]

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return {"id": str(index), "label": 0}


def mixture(seed: int = 0) -> MixtureDataset:
    return MixtureDataset(sources={"small": {"dataset": Numbers(5), "weight": 3.0},
                                   "large": {"dataset": Numbers(40), "weight": 1.0}}, seed=seed, size=20)


def draw(data: MixtureDataset, epoch: int) -> list[str]:
    return [data.at_epoch(epoch, i)["id"] for i in range(len(data))]


def test_draws_follow_the_weights_and_the_seed_alone() -> None:
    data = mixture()
    first = draw(data, 0)
    assert Counter(i.split("/")[0] for i in first) == {"small": 15, "large": 5}  # 3:1 of 20
    assert draw(mixture(), 0) == first and draw(data, 1) != first and draw(mixture(seed=1), 0) != first
    small = [i for i in first if i.startswith("small/")]
    assert Counter(small) == {f"small/{n}": 3 for n in range(5)}  # drawn 3x its size: each sample 3 times
    seen = {i for epoch in range(8) for i in draw(data, epoch) if i.startswith("large/")}
    assert seen == {f"large/{n}" for n in range(40)}  # 5 an epoch: the whole source over 8 epochs


@pytest.mark.parametrize("sources, message", [
    ({}, "data.train.sources is empty"),
    ({"a": {"dataset": Numbers(3), "weight": 0}}, r"data.train.sources.a.weight is 0: a positive number"),
    ({"a": {"dataset": Numbers(3), "weight": float("nan")}}, r"data.train.sources.a.weight is nan"),
    ({"a": {"dataset": Numbers(0)}}, r"data.train.sources.a has no samples"),
])
def test_bad_sources_are_refused_naming_the_key(sources: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MixtureDataset(sources=sources)


def test_sources_must_share_their_labels() -> None:
    other = Numbers(3)
    other.label_names = ["else"]
    with pytest.raises(ValueError, match=r"data.train.sources.b has labels \['else'\], the first source a has"):
        MixtureDataset(sources={"a": {"dataset": Numbers(3)}, "b": {"dataset": other}})


def mixture_config() -> str:
    """The shipped spoken_digits data config with its train split drawn 3:1 from the train and the validation
    videos (a test of the mechanism, not of sense)."""
    import yaml

    from mmtrain.configs import __file__ as configs

    def source(split: str, weight: int) -> dict:
        return {"weight": weight, "dataset": {
            "_target_": "mmtrain.data.formats.mp4_label_json.Mp4LabelJsonDataset",
            "video_dir": f"${{data.prepare.root}}/videos/{split}", "label_dir": f"${{data.prepare.root}}/labels/{split}",
            "label_names": "${data.test.label_names}", "num_frames": "${data.processor.num_frames}",
            "modalities": "${data.processor.modalities}"}}

    data = yaml.safe_load((Path(configs).parent / "data" / "spoken_digits.yaml").read_text())
    data["train"] = {"_target_": "mmtrain.data.mixture.MixtureDataset", "seed": "${seed}", "size": 24,
                     "sources": {"digits": source("train", 3), "held_out": source("val", 1)}}
    data["test"]["label_names"] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    data["val"] = {"digits": source("val", 1)["dataset"], "held_out": source("test", 1)["dataset"]}  # named sources
    return yaml.safe_dump(data, sort_keys=False)


COMMAND = ["experiment=demo", "data=digits_mixture", "data.prepare.size=tiny", "data.num_workers=2",
           "trainer.max_epochs=2", "data.batch_size=4", "callbacks.resume_checkpoint.every_n_train_steps=2",
           "evaluate_unimodal=false", "callbacks.progress=null"]


@pytest.mark.slow
@pytest.mark.long
def test_the_demo_trains_from_a_mixture_and_resumes_it_exactly(tmp_path: Path) -> None:
    configs = tmp_path / "configs" / "data"
    configs.mkdir(parents=True)
    (configs / "digits_mixture.yaml").write_text(mixture_config())
    flag = ["--config-dir", str(tmp_path / "configs")]
    done = run_mmtrain("train", *flag, *COMMAND, f"run_dir={tmp_path / 'whole'}", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    metrics = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    sources = metrics["val_sources"]  # the two val sources' metrics, and their mean as val (what checkpoints follow)
    assert sorted(sources) == ["digits", "held_out"]
    assert [sum(map(sum, s["confusion"])) for s in sources.values()] == [8, 8]  # each source's own 8 samples
    assert metrics["val"]["macro_f1"] == pytest.approx((sources["digits"]["macro_f1"] + sources["held_out"]["macro_f1"]) / 2)
    assert "val (digits)" in done.stdout and "val (mean of sources)" in done.stdout
    killed = tmp_path / "killed"
    code = killed_ddp_run(*flag, *COMMAND, *kill_overrides(9), f"run_dir={killed}", cwd=tmp_path, name="mixture")
    assert code == SIGKILLED  # after step 9 of 12: mid epoch 2, 2 workers prefetching
    resumed = run_mmtrain("train", *flag, *COMMAND, f"resume={killed}", cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert compare_runs(tmp_path / "whole", killed) == []  # weights, optimizer state, every step's loss


def test_the_training_loader_asks_the_mixture_for_its_epoch() -> None:
    from mmtrain.data.resumable import KeyedDataset

    data = mixture()
    keyed = KeyedDataset(data, seed=0)
    assert [keyed[(3, i)][1]["id"] for i in range(len(data))] == draw(data, 3) != draw(data, 0)

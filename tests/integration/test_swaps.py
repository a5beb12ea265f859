"""Swapping a part on the command line alone trains: every fusion, every video encoder, audio towers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import mmtrain.models  # noqa: F401
from mmtrain.config.compose import compose_config
from mmtrain.app.commands.train import train

pytestmark = pytest.mark.slow

TINY = ["data=synthetic", "data.train.num_samples=16", "data.val.num_samples=8", "data.test.num_samples=8", "data.batch_size=8",
        "trainer.max_epochs=1", "callbacks.progress=null", "logger.tensorboard=null",
        "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0"]

SWAPS = [
    *(f"model/fusion={f}" for f in ("concat", "gated", "cross_attention", "bottleneck", "perceiver")),
    *(f"model/encoders/video={v}" for v in ("frame_mean", "frame_attention", "conv1d")),
    "model/encoders/audio=whisper", "model/encoders/audio=hubert", "model/encoders/image=vit",
]


@pytest.mark.parametrize("swap", SWAPS)
def test_swap_trains_and_exports(swap: str, tmp_path: Path) -> None:
    cfg = compose_config([swap, *TINY, f"run_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    assert metrics["global_steps"] == 2
    export = tmp_path / "run" / "export"
    model = AutoModel.from_pretrained(export)
    config = json.loads((export / "config.json").read_text())
    group, option = swap.split("=")
    slot = group.split("/")[-1]
    spec = config["fusion"] if slot == "fusion" else config["encoders"][slot]
    assert spec == cfg_spec(cfg, group)
    best = torch.load(metrics["best_checkpoint"], weights_only=True)["state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, best[f"model.{name}"]), name


def cfg_spec(cfg, group: str) -> dict:
    from omegaconf import OmegaConf

    node = cfg.model.fusion if group.endswith("fusion") else cfg.model.encoders[group.split("/")[-1]]
    return OmegaConf.to_container(node, resolve=True)


def test_freezing_from_config_keeps_frozen_parts_identical(tmp_path: Path) -> None:
    cfg = compose_config(["+model.trainable.video=false", "+model.trainable.text=false", *TINY,
                          f"run_dir={tmp_path / 'run'}"])
    from mmtrain.config.targets import runtime_prefixes
    from mmtrain.engine.build import build_model

    train(cfg)
    best = torch.load(next((tmp_path / "run" / "checkpoints").glob("best-*.ckpt")), weights_only=True)["state_dict"]
    # The same seed builds the same initial weights: frozen parts must still equal them, trained ones not.
    torch.manual_seed(int(cfg.seed))
    fresh = build_model(cfg, ["neutral", "joy", "sadness", "anger"], runtime_prefixes())
    initial = fresh.state_dict()
    for name, tensor in initial.items():
        trained = best[f"model.{name}"]
        if name.startswith(("encoders.video.", "encoders.text.")):
            assert torch.equal(trained, tensor), f"frozen {name} changed"
    changed = [n for n in initial if n.startswith("fusion.") and not torch.equal(best[f"model.{n}"], initial[n])]
    assert changed, "trainable fusion did not change"


def test_precision_accumulation_and_clipping_come_from_the_trainer_config(tmp_path: Path) -> None:
    cfg = compose_config(["trainer.precision=bf16-mixed", "trainer.accumulate_grad_batches=2",
                          "trainer.gradient_clip_val=0.5", *TINY, f"run_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    assert metrics["global_steps"] == 1, "2 batches accumulated over 2 must make one optimizer step"
    assert 0.0 <= metrics["test"]["acc"] <= 1.0

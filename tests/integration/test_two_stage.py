"""Two-stage training: unimodal stage-I runs, then a fusion run that starts from their encoders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmtrain.app.cli import main
from mmtrain.config.compose import compose_config
from mmtrain.app.commands.train import train

pytestmark = pytest.mark.slow

SYNTH = ["data=synthetic", "data.train.num_samples=16", "data.val.num_samples=8", "data.test.num_samples=8",
         "data.batch_size=8", "trainer.max_epochs=2", "callbacks.progress=null", "logger.tensorboard=null",
         "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0", "evaluate_unimodal=false"]


def weights(run: Path, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(run / "export" / "model.safetensors").items() if k.startswith(prefix)}


def test_one_command_runs_every_stage_and_stage_two_keeps_the_stage_one_encoders(tmp_path: Path) -> None:
    root = tmp_path / "pipeline"
    # stage I stops once val macro-F1 reaches stage_one_stop (0: at its first validation); stage II runs its epochs
    assert main(["train", "experiment=emotion_two_stage", *SYNTH, "stage_one_stop=0.0", f"run_dir={root}"]) == 0
    summary = json.loads((root / "stages.json").read_text())
    assert list(summary["stages"]) == ["video", "audio", "text", "fusion"]
    for slot in ("video", "audio", "text"):
        assert json.loads((root / slot / "metrics.json").read_text())["epochs"] == 1
        assert "stopping_threshold: 0.0" in (root / slot / "config.yaml").read_text()
    assert json.loads((root / "fusion" / "metrics.json").read_text())["epochs"] == 2
    assert "<th>stage</th>" in (root / "report.html").read_text()
    assert (root / "fusion" / "report.html").is_file()
    fusion_cfg = (root / "fusion" / "config.yaml").read_text()
    assert f"video: {root / 'video'}" in fusion_cfg  # ${stage:video} resolved to the stage-I run
    for slot in ("video", "audio", "text"):
        stage_one = weights(root / slot, f"encoders.{slot}.")
        stage_two = weights(root / "fusion", f"encoders.{slot}.")
        assert stage_one and stage_one.keys() == stage_two.keys()
        for name, tensor in stage_one.items():  # loaded, then frozen (and kept in eval mode): identical
            assert torch.equal(tensor, stage_two[name]), name
    # The fusion and head trained: they differ from the same-seed initial weights.
    cfg = compose_config(["experiment=emotion_two_stage", *SYNTH, "stages=null"])
    from mmtrain.config.targets import runtime_prefixes
    from mmtrain.engine.build import build_model

    torch.manual_seed(int(cfg.seed))
    initial = build_model(cfg, [str(i) for i in range(4)], runtime_prefixes(), warm_start=False).state_dict()
    trained = weights(root / "fusion", "head.")
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)
    assert "test" in summary["stages"]["fusion"] and 0.0 <= summary["stages"]["fusion"]["test"]["acc"] <= 1.0


@pytest.fixture(scope="module")
def video_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("stage1") / "video"
    train(compose_config(["~model/encoders/audio", "~model/encoders/text", "model/fusion=identity",
                          "model/encoders/video=conv1d", *SYNTH, "trainer.max_epochs=1", f"run_dir={run}"]))
    return run


def test_two_commands_reference_a_run_or_its_export(video_run: Path, tmp_path: Path) -> None:
    for source in (video_run, video_run / "export"):
        run = tmp_path / source.name
        train(compose_config(["model/encoders/video=conv1d", f"+model.init.video={source}",
                              "+model.trainable.video=false", *SYNTH, "trainer.max_epochs=1", f"run_dir={run}"]))
        loaded, expected = weights(run, "encoders.video."), weights(video_run, "encoders.video.")
        assert all(torch.equal(loaded[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["model/encoders/video=frame_mean"], ValueError, r"model\.init\.video: the weights of 'video'.*do not fit"),
        (["model/encoders/video=conv1d", "+model.init.fusion=RUN"], ValueError,
         r"model\.init\.fusion: .* has no component 'fusion'"),
        (["model/encoders/video=conv1d", "+model.init.vidoe=RUN"], ValueError,
         r"model\.init\.vidoe: the model has no component 'vidoe'"),
        (["model/encoders/video=conv1d", "+model.init.text=/nonexistent/run"], FileNotFoundError,
         r"model\.init\.text: /nonexistent/run is neither"),
    ],
)
def test_a_reference_that_does_not_fit_is_named(video_run: Path, tmp_path: Path, overrides, error, match) -> None:
    overrides = [o.replace("RUN", str(video_run)) for o in overrides]
    init = [] if any(o.startswith("+model.init") for o in overrides) else [f"+model.init.video={video_run}"]
    cfg = compose_config([*overrides, *init, *SYNTH, f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(error, match=match):
        train(cfg)
    assert not (tmp_path / "run").exists(), "a refused reference must stop the run before its folder is made"


def test_stage_reference_outside_a_pipeline_is_explained(tmp_path: Path) -> None:
    cfg = compose_config(["+model.init.video=${stage:video}", *SYNTH, f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ValueError, match=r"only defined inside a pipeline"):
        train(cfg)

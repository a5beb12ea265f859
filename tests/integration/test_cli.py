"""The CLI end to end, as a user runs it: train, eval, export, predict, errors."""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from _cli import run_mmtrain
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

# The real demo set (mp4 + label JSON, decoded with PyAV), at its tiny size: built on first use.
TINY = ["data.prepare.size=tiny", "data.batch_size=8", "trainer.max_epochs=2", "callbacks.progress=null"]


def mmtrain(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_mmtrain(*args, cwd=cwd)


def write_media(folder: Path) -> tuple[Path, Path]:
    video = folder / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for index in range(8):
            frame = np.full((32, 32, 3), index * 30, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    audio = folder / "tone.wav"
    with wave.open(str(audio), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        handle.writeframes((np.sin(np.arange(8000) * 0.4) * 9000).astype(np.int16).tobytes())
    return video, audio


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("cli")
    result = mmtrain("train", "experiment=demo", *TINY, f"data_root={workdir / 'data'}", cwd=workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    runs = list((workdir / "outputs" / "demo").iterdir())
    assert len(runs) == 1
    return runs[0]


def test_train_writes_the_run_directory(trained_run: Path) -> None:
    assert (trained_run / "config.yaml").is_file()
    assert (trained_run / "checkpoints" / "last.ckpt").is_file()
    assert list((trained_run / "checkpoints").glob("best-*.ckpt"))
    assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("config.json", "model.safetensors", "processor_config.json", "training_config.yaml"):
        assert (trained_run / "export" / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics["test"]) == {"acc", "macro_f1", "per_class_acc", "confusion"}
    manifest = json.loads((trained_run.parent.parent.parent / "data" / "spoken_digits" / "manifest.json").read_text())
    assert sum(map(sum, metrics["test"]["confusion"])) == manifest["counts"]["test"]["segments"]
    assert set(metrics["test_only_one_modality"]) == {"video", "audio", "text"}
    config = json.loads((trained_run / "export" / "config.json").read_text())
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert config["id2label"] == {str(i): name for i, name in enumerate(digits)}
    assert config["fusion"]["_target_"].endswith("BottleneckFusion")


def test_eval_reproduces_the_test_metrics(trained_run: Path) -> None:
    result = mmtrain("eval", str(trained_run), cwd=trained_run)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((trained_run / "export" / "eval_test.json").read_text())["test"]
    trained = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert evaluated["confusion"] == trained["confusion"]


def test_export_from_checkpoint_matches_the_run_export(trained_run: Path) -> None:
    best = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    out = trained_run / "re-export"
    result = mmtrain("export", str(best), "--out", str(out), cwd=trained_run)
    assert result.returncode == 0, result.stderr[-3000:]
    ours, theirs = load_file(out / "model.safetensors"), load_file(trained_run / "export" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_predict_on_real_media_files(trained_run: Path, tmp_path: Path) -> None:
    video, audio = write_media(tmp_path)
    result = mmtrain("predict", str(trained_run / "export"), "--video", str(video), "--audio", str(audio),
                     "--text", "we were so happy today", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout[result.stdout.index("{"):])
    assert answer["label"] in answer["probabilities"]
    assert abs(sum(answer["probabilities"].values()) - 1.0) < 1e-4
    assert answer["modalities_used"] == ["video", "audio", "text"]


def test_bad_override_stops_before_training(tmp_path: Path) -> None:
    result = mmtrain("train", "model.fusion.hiden_dim=8", cwd=tmp_path)
    assert result.returncode == 2
    assert "hiden_dim" in result.stdout
    assert not (tmp_path / "outputs").exists(), "nothing may be written for a config that does not compose"


def test_missing_export_is_named(tmp_path: Path) -> None:
    result = mmtrain("predict", str(tmp_path / "no-such-export"), "--text", "hi", cwd=tmp_path)
    assert result.returncode == 2 and "no-such-export" in result.stdout


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export", "list"])
def test_help_of_every_command(command: str, tmp_path: Path) -> None:
    result = mmtrain(command, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "usage: mmtrain" in result.stdout


def test_list_shows_components_and_experiments(tmp_path: Path) -> None:
    result = mmtrain("list", cwd=tmp_path)
    assert result.returncode == 0
    for option in ("bottleneck", "perceiver", "frame_attention", "whisper", "demo"):
        assert option in result.stdout


def test_predict_refuses_a_modality_the_model_lacks(trained_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (16, 16)).save(tmp_path / "x.png")
    result = mmtrain("predict", str(trained_run / "export"), "--image", str(tmp_path / "x.png"), "--text", "seven",
                     cwd=tmp_path)
    assert result.returncode == 2
    assert "--image given, but the model has no image encoder; it reads --video / --audio / --text" in " ".join(
        result.stdout.split())


def test_predict_reads_one_segment_of_a_clip(trained_run: Path, tmp_path: Path) -> None:
    video, _ = write_media(tmp_path)  # 8 frames at 8 fps: 1 s
    whole = mmtrain("predict", str(trained_run / "export"), "--video", str(video), "--text", "hi", cwd=tmp_path)
    part = mmtrain("predict", str(trained_run / "export"), "--video", str(video), "--text", "hi",
                   "--start", "0.5", "--end", "1.0", cwd=tmp_path)
    assert whole.returncode == 0 and part.returncode == 0, part.stdout[-2000:]
    probabilities = [json.loads(r.stdout[r.stdout.index("{"):])["probabilities"] for r in (whole, part)]
    assert probabilities[0] != probabilities[1]  # other frames: another answer
    late = mmtrain("predict", str(trained_run / "export"), "--video", str(video), "--start", "3", "--end", "4",
                   cwd=tmp_path)
    assert late.returncode == 2 and "Give --start/--end inside the clip" in " ".join(late.stdout.split())

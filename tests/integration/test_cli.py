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


# ---------------------------------------------------------------------------------------- batch predict
def rows_of(file: Path) -> list[dict]:
    return [json.loads(line) for line in file.read_text().splitlines()]


def test_batch_predict_over_the_test_split_matches_the_run(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.jsonl"
    result = mmtrain("predict", str(trained_run), "--out", str(out), "--batch-size", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = rows_of(out)
    trained = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert len(rows) == sum(map(sum, trained["confusion"])) and len({r["id"] for r in rows}) == len(rows)
    digits = list(rows[0]["probabilities"])
    confusion = [[0] * len(digits) for _ in digits]
    for row in rows:
        confusion[digits.index(row["target"])][digits.index(row["label"])] += 1
        assert abs(sum(row["probabilities"].values()) - 1.0) < 1e-4
    assert confusion == trained["confusion"]  # the same answers as the run's own test
    assert f"accuracy {trained['acc']:.4f}" in " ".join(result.stdout.split())
    assert not list(tmp_path.glob("*.partial.jsonl"))


def test_batch_predict_over_a_folder_agrees_with_single_predict(trained_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "inputs"
    (folder / "more").mkdir(parents=True)
    video, _ = write_media(folder)  # inputs/clip.mp4 (no audio stream)
    (folder / "more" / "clip.txt").write_text("seven\n")
    (folder / "more" / "broken.mp4").write_bytes(b"not a video")
    (folder / "notes.md").write_text("not a sample")
    out = tmp_path / "preds.csv"
    result = mmtrain("predict", str(trained_run), "--data", str(folder), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    import csv

    with out.open() as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == ["clip", "more/broken", "more/clip", "tone"]  # tone.wav: an audio-only sample
    assert "cannot open" in rows["more/broken"]["error"] and not rows["more/broken"]["label"]
    assert list(csv.reader(out.open()))[0][-1] == "error"
    single = mmtrain("predict", str(trained_run), "--video", str(video), cwd=tmp_path)
    expected = json.loads(single.stdout[single.stdout.index("{"):])
    assert rows["clip"]["label"] == expected["label"]
    for name, probability in expected["probabilities"].items():
        assert abs(float(rows["clip"][f"probabilities.{name}"]) - probability) < 1e-5
    for sample, flag, value in (("more/clip", "--text", "seven"), ("tone", "--audio", str(folder / "tone.wav"))):
        alone = mmtrain("predict", str(trained_run), flag, value, cwd=tmp_path)
        assert rows[sample]["label"] == json.loads(alone.stdout[alone.stdout.index("{"):])["label"], sample


def test_batch_predict_reads_a_data_config_and_refuses_a_hostile_one(trained_run: Path, tmp_path: Path) -> None:
    config = tmp_path / "val_as_test.yaml"
    config.write_text(
        "test:\n  _target_: mmtrain.data.formats.mp4_label_json.Mp4LabelJsonDataset\n"
        "  video_dir: ${data_root}/spoken_digits/videos/val\n  label_dir: ${data_root}/spoken_digits/labels/val\n"
        "  label_names: [zero, one, two, three, four, five, six, seven, eight, nine]\n  num_frames: ${data.processor.num_frames}\n"
        "  modalities: ${data.processor.modalities}\n")
    out = tmp_path / "val.jsonl"
    result = mmtrain("predict", str(trained_run), "--data", str(config), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    val_ids = {row["id"] for row in rows_of(out)}
    default = mmtrain("predict", str(trained_run), "--split", "val", "--out", str(tmp_path / "v2.jsonl"), cwd=tmp_path)
    assert default.returncode == 0 and val_ids == {row["id"] for row in rows_of(tmp_path / "v2.jsonl")}
    config.write_text("test:\n  _target_: os.system\n  command: touch pwned\n")
    refused = mmtrain("predict", str(trained_run), "--data", str(config), "--out", str(tmp_path / "x.jsonl"),
                      cwd=tmp_path)
    assert refused.returncode == 2 and "'os.system' is not allowed" in " ".join(refused.stdout.split())
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x.jsonl").exists()

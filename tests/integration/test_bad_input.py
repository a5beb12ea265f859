"""Bad input stops before training with an error naming the key or file; nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmtrain.config.compose import compose_config
from mmtrain.app.commands.train import train

CASES = [
    ("model.encoders.text.config.vocab_size=100", "model.encoders.text"),
    ("model.encoders.video.frame_encoder.config.image_size=24", "model.encoders.video"),
    ("model.encoders.audio.num_mel_bins=64", "model.encoders.audio"),
    ("data.processor.tokenizer=/no/such/tokenizer", "/no/such/tokenizer"),
    ("model.encoders.text.pretrained_path=/no/such/bert", "/no/such/bert"),
    ("+model.trainable.vidoe=false", "vidoe"),
    ("data.processor.audio_frames=150", "audio_frames"),
]


@pytest.mark.parametrize(("override", "named"), CASES)
def test_bad_input_is_named_before_training(override: str, named: str, tmp_path: Path) -> None:
    cfg = compose_config(["data=synthetic", override, f"output_root={tmp_path}"])
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        train(cfg)
    assert named in str(err.value)
    assert not any(tmp_path.iterdir()), "a run that cannot start must not leave a run directory"


def test_run_dir_with_a_file_in_the_way_exits_74_naming_the_path(tmp_path: Path) -> None:
    from mmtrain.app.cli import console, main
    from mmtrain.core.fileio import EXIT_WRITE_ERROR, RunWriteError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the run directory should go")
    cfg = compose_config(["data=synthetic", f"run_dir={blocker / 'run'}"])
    with pytest.raises(RunWriteError) as err:
        train(cfg)
    assert str(blocker / "run") in str(err.value) and "choose another run_dir=" in str(err.value)
    with console.capture() as captured:
        code = main(["train", "data=synthetic", f"run_dir={blocker / 'run'}", "trainer.max_epochs=1"])
    assert code == EXIT_WRITE_ERROR == 74
    assert "could not write run directory" in captured.get() and "not-a-folder" in captured.get()

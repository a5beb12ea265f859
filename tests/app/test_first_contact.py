"""What a new user trips over first: typos get "did you mean", a bad batch size is named before any
run folder exists, eval offers only the splits it scores, predict refuses a modality the model lacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmtrain.app.cli import main
from mmtrain.app.commands.train import prepare, train
from mmtrain.config.compose import ConfigError, compose_config


@pytest.mark.parametrize(("override", "suggestion"), [
    ("trainer.max_epoch=1", "did you mean 'trainer.max_epochs'?"),
    ("model.fusion.hiden_dim=8", "did you mean 'model.fusion.hidden_dim'?"),
    ("model/fusion=gatd", "did you mean model/fusion=gated?"),
])
def test_a_typo_is_answered_with_the_closest_key_first(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as err:
        compose_config([override])
    assert str(err.value).splitlines()[0].endswith(suggestion) or suggestion in str(err.value).splitlines()[0]


def test_an_appended_unknown_argument_names_the_closest_one() -> None:
    with pytest.raises(ConfigError, match=r"has no argument 'max_epoch'\. Did you mean 'trainer.max_epochs'"):
        prepare(compose_config(["+trainer.max_epoch=3"]))


@pytest.mark.parametrize(("override", "named"), [("data.batch_size=-4", "data.batch_size must be >= 1, got -4"),
                                                 ("data.num_workers=-1", "data.num_workers must be >= 0")])
def test_a_bad_loader_setting_is_named_before_any_run_folder(tmp_path: Path, override: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        train(compose_config(["data=synthetic", override, f"output_root={tmp_path / 'outputs'}"]))
    assert not (tmp_path / "outputs").exists()


def test_eval_offers_only_the_splits_it_scores(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["eval", "some-run", "--split", "train"])
    assert done.value.code == 2 and "invalid choice: 'train' (choose from 'val', 'test')" in capsys.readouterr().err


def test_the_run_config_names_its_data_by_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg, _ = prepare(compose_config(["experiment=demo"]))  # data_root: data (relative), as shipped
    assert cfg.data_root == str(tmp_path / "data") and cfg.output_root == str(tmp_path / "outputs")
    assert cfg.data.prepare.root == str(tmp_path / "data" / "spoken_digits")  # what an eval elsewhere reads


@pytest.mark.slow  # builds the tiny demo set, then stops at the model (~10 s)
def test_settings_a_tower_config_does_not_have_are_named(tmp_path: Path) -> None:
    # vqa_digits sets GPT-2's n_embd / n_head / n_inner; the TRM decoder's config has none of them
    with pytest.raises(ValueError, match=r"'n_embd'.*are not a setting of a 'mmtrain_trm' config") as err:
        train(compose_config(["experiment=vqa_digits", "model/decoder=trm", "data.prepare.size=tiny",
                              f"data_root={tmp_path / 'data'}", f"output_root={tmp_path / 'outputs'}"]))
    assert "config key 'model.decoder'" in " ".join(err.value.__notes__)  # printed under the error by the CLI
    assert not (tmp_path / "outputs").exists()

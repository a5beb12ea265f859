"""The _target_ allowlist: refusals name key and target, and nothing is imported first."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from mmtrain.config.compose import ConfigError, compose_config
from mmtrain.config.instantiate import safe_instantiate
from mmtrain.config.targets import (
    DEFAULT_ALLOWED_PREFIXES,
    TargetNotAllowedError,
    check_targets,
    locate_allowed,
    narrow_prefixes,
)
from mmtrain.app.commands.train import prepare

DANGEROUS = ["os.system", "builtins.eval", "logging.os.system", "subprocess.Popen", "torch.load"]
TRAMPOLINES = [
    "torch.nn.modules.module.torch.load",
    "mmtrain.config.targets.importlib.import_module",
    "torch.optim.optimizer.torch.save",
]


@pytest.mark.parametrize("target", DANGEROUS + TRAMPOLINES)
def test_dangerous_targets_are_refused_naming_key_and_target(target: str) -> None:
    cfg = OmegaConf.create({"model": {"fusion": {"_target_": target, "command": "touch /tmp/pwned"}}})
    with pytest.raises(TargetNotAllowedError) as err:
        safe_instantiate(cfg, DEFAULT_ALLOWED_PREFIXES)
    assert "model.fusion" in str(err.value)
    assert target in str(err.value)


def test_prefix_matches_on_dotted_boundaries() -> None:
    with pytest.raises(TargetNotAllowedError):
        locate_allowed("mmtrain_evil.Thing", ["mmtrain"], "k")
    assert locate_allowed("torch.nn.Linear", ["torch.nn"], "k").__name__ == "Linear"


def test_marker_module_is_never_imported(marker_module: tuple[str, Path]) -> None:
    name, marker = marker_module
    cfg = OmegaConf.create({
        "a": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2},
        "deep": {"list": [{"x": {"_target_": f"{name}.Thing"}}]},
    })
    with pytest.raises(TargetNotAllowedError) as err:
        check_targets(cfg, DEFAULT_ALLOWED_PREFIXES)
    assert "deep.list[0].x" in str(err.value) and f"{name}.Thing" in str(err.value)
    assert not marker.exists()


def test_composed_training_config_with_marker_is_refused_before_import(marker_module: tuple[str, Path]) -> None:
    name, marker = marker_module
    cfg = compose_config([f"model.fusion._target_={name}.Thing"])
    with pytest.raises(TargetNotAllowedError) as err:
        prepare(cfg)
    assert "model.fusion" in str(err.value)
    assert not marker.exists()


def test_user_can_allow_their_own_prefix(marker_module: tuple[str, Path]) -> None:
    name, marker = marker_module
    obj = safe_instantiate({"_target_": f"{name}.Thing"}, [*DEFAULT_ALLOWED_PREFIXES, name])
    assert type(obj).__name__ == "Thing" and marker.exists()


def test_stored_allowlist_narrows_never_widens() -> None:
    runtime = ["mmtrain.", "torch.optim."]
    assert narrow_prefixes(runtime, ["mmtrain.", "os."]) == ("mmtrain.",)
    assert narrow_prefixes(runtime, ["mmtrain.components.fusion."]) == ("mmtrain.components.fusion.",)
    assert narrow_prefixes(runtime, None) == ("mmtrain.", "torch.optim.")


def test_unknown_override_key_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        compose_config(["model.fusion.hiden_dim=8"])
    assert "hiden_dim" in str(err.value)


def test_unknown_group_option_names_the_option() -> None:
    with pytest.raises(ConfigError) as err:
        compose_config(["model/fusion=transformer_xl"])
    assert "transformer_xl" in str(err.value)


def test_argument_the_target_lacks_is_named() -> None:
    cfg = compose_config(["+model.fusion.hiden_dim=8"])
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert "model.fusion.hiden_dim" in str(err.value)


def test_checkpoint_with_refused_target_is_not_imported(tmp_path: Path, marker_module: tuple[str, Path]) -> None:
    from mmtrain.engine.callbacks.export import CONFIG_KEY, LABELS_KEY
    from mmtrain.engine.callbacks.checkpoint_io import AtomicCheckpointIO
    from mmtrain.app.commands.evaluate import export_checkpoint

    name, marker = marker_module
    cfg = compose_config([])
    OmegaConf.set_struct(cfg, False)
    cfg.run_dir = str(tmp_path)
    cfg.allowed_target_prefixes = [name]  # the checkpoint asks for more than the user allows
    cfg.model.fusion._target_ = f"{name}.Thing"
    checkpoint = tmp_path / "evil.ckpt"
    AtomicCheckpointIO().save_checkpoint(
        {CONFIG_KEY: OmegaConf.to_yaml(cfg, resolve=True), LABELS_KEY: ["a", "b"], "state_dict": {}}, checkpoint)
    with pytest.raises(ValueError) as err:
        export_checkpoint(checkpoint, tmp_path / "out")
    assert "model.fusion" in str(err.value) and f"{name}.Thing" in str(err.value)
    assert not marker.exists()

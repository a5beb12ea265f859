"""Every YAML shipped in mmtrain.configs composes and binds to its target's signature."""

from __future__ import annotations

from importlib.resources import files

import pytest
from omegaconf import OmegaConf

from mmtrain.config.compose import ConfigError, compose_config, config_groups, group_options
from mmtrain.config.validate import target_nodes
from mmtrain.app.commands.train import prepare

GROUPS = config_groups()
# Groups (or group/option) that only a given model kind takes (model/decoder sits in model=llm; the
# regression head's num_outputs comes from model=regression).
HOST_KIND = {"model/decoder": "model=llm", "model/head/regression": "model=regression"}


def _all_options() -> list[tuple[str, str]]:
    return [(group, option) for group in GROUPS for option in group_options(group)]


def test_every_yaml_file_belongs_to_a_checked_group() -> None:
    root = files("mmtrain.configs")
    shipped = {str(p.relative_to(root)) for p in root.rglob("*.yaml")}  # type: ignore[attr-defined]
    checked = {f"{g}/{o}.yaml" for g, o in _all_options()} | {"train.yaml"}
    assert shipped == checked


@pytest.mark.parametrize(("group", "option"), _all_options(), ids=lambda v: str(v))
def test_option_composes_and_binds(group: str, option: str) -> None:
    host = [kind] if (kind := HOST_KIND.get(f"{group}/{option}", HOST_KIND.get(group))) else []
    cfg = compose_config([*host, f"{group}={option}"])
    prepare(cfg)  # raises on an unknown argument, a missing one, or a refused target
    section = group.split("/")[0]
    if section == "experiment":
        assert cfg.name == option, f"experiment/{option}.yaml should set name: {option}"
    elif section == "trainer":
        assert cfg.trainer.accelerator  # bound to lightning.pytorch.Trainer's signature by prepare()
    else:
        assert any(True for _ in target_nodes(OmegaConf.to_container(cfg[section], resolve=True), section)), f"{group}/{option} builds nothing"


def test_trainer_keys_are_checked_against_the_trainer_signature() -> None:
    cfg = compose_config(["+trainer.max_epoch=3"])
    with pytest.raises(ConfigError) as err:
        prepare(cfg)
    assert "trainer.max_epoch" in str(err.value)


def test_a_gpu_only_strategy_is_refused_here_before_anything_is_built(tmp_path) -> None:
    import torch

    from mmtrain.app.commands.train import train

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: FSDP would run")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        train(compose_config(["trainer=fsdp", f"output_root={tmp_path}"]))
    assert list(tmp_path.iterdir()) == []  # no run directory was made

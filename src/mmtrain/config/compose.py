"""Compose the training config from the YAML shipped in ``mmtrain.configs`` plus overrides."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mmtrain.config.resolvers import register_resolvers

CONFIG_MODULE = "mmtrain.configs"


class ConfigError(ValueError):
    """A config that cannot be composed or does not fit together; the message names the key."""


def compose_config(
    overrides: Sequence[str] = (), *, config_name: str = "train", config_dir: str | Path | None = None
) -> DictConfig:
    """Compose ``config_name`` with Hydra overrides (``key=value``, ``group=option``, ``~group``).

    Args:
        overrides: Hydra override strings, as typed on the command line.
        config_dir: an extra folder searched for config groups (e.g. your own ``experiment/``).

    Raises:
        ConfigError: an unknown key or option, with Hydra's explanation.
    """
    register_resolvers()
    extra = list(overrides)
    if config_dir is not None:
        folder = Path(config_dir).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError(f"--config-dir {folder} does not exist.")
        extra.append(f"hydra.searchpath=[file://{folder}]")
    host_hydra = get_gh_backup()  # a caller's own Hydra app stays initialised as it was
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=extra)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(f"cannot compose the config: {err}") from err
    finally:
        restore_gh_from_backup(host_hydra)
    OmegaConf.set_struct(cfg, True)
    return cfg


def group_options(group: str) -> list[str]:
    """Option names of a config group shipped with mmtrain (``model/fusion`` -> ``[bottleneck, ...]``)."""
    from importlib.resources import files

    folder = files(CONFIG_MODULE).joinpath(*group.split("/"))
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def config_groups() -> list[str]:
    """Every config group shipped with mmtrain (folders holding YAML), e.g. ``model/fusion``."""
    from importlib.resources import files

    root = files(CONFIG_MODULE)
    groups = []

    def walk(folder, prefix: str) -> None:
        for child in sorted(folder.iterdir(), key=lambda p: p.name):
            if child.is_dir() and not child.name.startswith("__"):
                name = f"{prefix}{child.name}"
                if any(p.name.endswith(".yaml") for p in child.iterdir()):
                    groups.append(name)
                walk(child, f"{name}/")

    walk(root, "")
    return groups

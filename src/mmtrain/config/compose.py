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
    try:
        cfg = _compose(config_name, extra)
    except (HydraException, OmegaConfBaseException) as err:
        hint = _did_you_mean(str(err), config_name, extra)
        raise ConfigError(f"{hint}cannot compose the config: {err}") from err
    if "overridden_keys" in cfg:  # the training config's record of what the command line set
        cfg.overridden_keys = overridden_keys(overrides)
    OmegaConf.set_struct(cfg, True)
    return cfg


def overridden_keys(overrides: Sequence[str]) -> list[str]:
    """The config keys that ``key=value`` overrides set (``+``/``++`` prefixes dropped), in order; group
    choices (``model/fusion=gated``) and deletions (``~key``) are not values and are left out."""
    keys = []
    for override in overrides:
        key, equals, _ = override.partition("=")
        key = key.lstrip("+")
        if equals and "/" not in key and not key.startswith("~") and key not in keys:
            keys.append(key)
    return keys


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    host_hydra = get_gh_backup()  # a caller's own Hydra app stays initialised as it was
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    finally:
        restore_gh_from_backup(host_hydra)


def _did_you_mean(message: str, config_name: str, overrides: list[str]) -> str:
    """For an override of a key that does not exist (Hydra: "Could not override 'a.b.c'"), a first line
    naming the closest keys of that node, before Hydra's advice to append with ``+``; else ``""``."""
    import difflib
    import re

    missing = re.search(r"Could not find '([^']+)'", message)
    if missing and "/" in missing.group(1):
        group, _, option = missing.group(1).rpartition("/")
        close = difflib.get_close_matches(option, group_options(group), n=3, cutoff=0.5)
        if close:
            return f"{group}={option} is not an option: did you mean {' or '.join(f'{group}={c}' for c in close)}?\n"
        return ""
    found = re.search(r"Could not override '([^']+)'", message)
    if not found:
        return ""
    key = found.group(1)
    parent, _, name = key.rpartition(".")
    rest = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        node = OmegaConf.select(_compose(config_name, rest), parent) if parent else _compose(config_name, rest)
    except (HydraException, OmegaConfBaseException):
        return ""
    if not isinstance(node, DictConfig):
        return ""
    close = difflib.get_close_matches(name, [str(k) for k in node.keys()], n=3, cutoff=0.6)
    where = f"'{parent}'" if parent else "the config's top level"
    if close:
        names = " or ".join(f"'{parent}.{c}'" if parent else f"'{c}'" for c in close)
        return f"config key '{key}' does not exist: did you mean {names}? (To add a new key on purpose: +{key}=...)\n"
    return f"config key '{key}' does not exist in {where}; its keys: {sorted(str(k) for k in node.keys())}.\n"


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

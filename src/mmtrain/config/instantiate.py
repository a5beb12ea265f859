"""Resolve, check, then build: the tree that is instantiated is exactly the tree that was checked.

``hydra.utils.instantiate`` resolves its own copy of a config and re-reads every string of it (and
of the keyword arguments it is given) as a possible interpolation, so a checked tree can still grow
new ``_target_`` nodes while it is built (``${oc.create:{_target_: ...}}`` in a config value, a
label name, an escaped ``\\${...}``). mmtrain therefore

1. resolves a config node once, into plain Python containers (:func:`resolved_tree`), which runs
   every resolver, ``oc.create`` included, *before* any check;
2. checks every ``_target_`` of that plain tree against the allowlist (strings first, nothing
   imported until all pass, then each attribute hop);
3. builds that same plain tree with :func:`build_tree`, which never parses a string again and
   locates each target through the allowlist once more.

The build follows Hydra's conventions for ``_target_``, ``_args_``, ``_partial_`` and
``_recursive_``; nested values reach the target as plain ``dict`` / ``list`` (Hydra's
``_convert_: all``), so ``_convert_`` is accepted and has nothing left to do.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf

from mmtrain.config.targets import TargetNotAllowedError, check_targets, locate_allowed

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
INTERPOLATION = "${"


class InstantiationError(ValueError):
    """A target refused the arguments its config node gave it; the message names the config key."""


class InterpolationInArtifactError(ValueError):
    """A config read from an artifact (export, checkpoint, training config) holds an interpolation.

    Attributes:
        source: the artifact, as named in the message.
        keys: the config keys holding one.
    """

    def __init__(self, source: str, keys: list[str]) -> None:
        self.source, self.keys = source, keys
        more = f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
        super().__init__(
            f"{source}: config key '{keys[0]}' holds an interpolation ('${{...}}'){more}. Configs stored in "
            "checkpoints and exports are written resolved by mmtrain, so this artifact was edited; mmtrain does "
            "not resolve interpolations read from artifacts. Replace them with plain values, or re-export from "
            "a checkpoint you trust."
        )


def resolved_tree(cfg: Any, config_key: str = "") -> Any:
    """``cfg`` as plain containers with every interpolation resolved (OmegaConf nodes), or a deep
    plain copy (dicts, lists, tuples: their strings are data, never read as interpolations).

    Raises:
        ValueError: an interpolation that does not resolve, naming ``config_key``.
    """
    if OmegaConf.is_config(cfg):
        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except Exception as err:  # an interpolation or missing value: name it
            raise ValueError(f"config key '{config_key or '<root>'}' does not resolve: {err}") from err
    if isinstance(cfg, Mapping):
        return {k: resolved_tree(v, config_key) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [resolved_tree(v, config_key) for v in cfg]
    return cfg


def find_interpolations(tree: Any, path: str = "") -> list[str]:
    """Config keys (``a.b[2].c``) of every string in a plain ``tree`` that holds ``${``."""
    found: list[str] = []
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            found += find_interpolations(value, f"{path}.{key}" if path else str(key))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            found += find_interpolations(value, f"{path}[{index}]")
    elif isinstance(tree, str) and INTERPOLATION in tree:
        found.append(path or "<root>")
    return found


def refuse_interpolations(tree: Any, source: str) -> None:
    """Refuse a config read from an artifact if any value in it is (or holds) an interpolation.

    ``tree``: plain containers as read (YAML/JSON, never resolved). A training run stores its
    config resolved, so an interpolation in an artifact was put there by hand.

    Raises:
        InterpolationInArtifactError: naming ``source`` and the first keys that hold one.
    """
    keys = find_interpolations(tree)
    if keys:
        raise InterpolationInArtifactError(source, keys)


def stored_config(text: str, source: str) -> Any:
    """Parse a YAML config stored in an artifact into an OmegaConf ``DictConfig`` with no interpolation.

    Raises:
        ValueError: the text is not a YAML mapping, or a value holds an interpolation (named).
    """
    import yaml

    try:
        tree = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as err:
        raise ValueError(f"{source}: the stored config is not valid YAML ({type(err).__name__}: {err})") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{source}: the stored config is not a mapping (got {type(tree).__name__}).")
    refuse_interpolations(tree, source)
    return OmegaConf.create(tree)


def build_tree(tree: Any, prefixes: Sequence[str], key: str = "", kwargs: Mapping[str, Any] | None = None) -> Any:
    """Build a checked plain ``tree``: every mapping with ``_target_`` is called (children first,
    unless ``_recursive_: false``); everything else is copied as plain data.

    Args:
        tree: plain containers from :func:`resolved_tree`, already passed through ``check_targets``.
        key: config key of ``tree``, for error messages.
        kwargs: arguments for the top node from the calling code (passed as they are, never parsed).
    """
    if isinstance(tree, Mapping) and "_target_" in tree:
        return _call(tree, prefixes, key, dict(kwargs or {}))
    if isinstance(tree, Mapping):
        return {k: build_tree(v, prefixes, f"{key}.{k}" if key else str(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [build_tree(v, prefixes, f"{key}[{i}]") for i, v in enumerate(tree)]
    return tree


def _call(node: Mapping[str, Any], prefixes: Sequence[str], key: str, kwargs: dict[str, Any]) -> Any:
    name = node["_target_"]
    where = key or "<root>"
    if not isinstance(name, str):
        raise TargetNotAllowedError(f"config key '{where}': _target_ must be a dotted name, got {type(name).__name__}.")
    target = locate_allowed(name, prefixes, where)
    recursive = bool(node.get("_recursive_", True))
    args = list(node.get("_args_") or [])
    params = {str(k): v for k, v in node.items() if k not in HYDRA_KEYS}
    if recursive:
        args = [build_tree(v, prefixes, f"{key}._args_[{i}]") for i, v in enumerate(args)]
        params = {k: build_tree(v, prefixes, f"{key}.{k}" if key else k) for k, v in params.items()}
    params.update(kwargs)
    _check_binds(target, args, params, name, where, partial=bool(node.get("_partial_", False)))
    if node.get("_partial_", False):
        return functools.partial(target, *args, **params)
    try:
        return target(*args, **params)
    except Exception as err:  # the component's own error: keep it, say where it was built
        err.add_note(f"(while building config key '{where}': {name})")
        raise


def _check_binds(target: Any, args: list[Any], params: dict[str, Any], name: str, where: str, *, partial: bool) -> None:
    """Raise :class:`InstantiationError` if ``target`` cannot take these arguments (``partial``:
    the rest come later)."""
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # a builtin without a signature: the call itself will tell
        return
    try:
        (signature.bind_partial if partial else signature.bind)(*args, **params)
    except TypeError as err:
        raise InstantiationError(f"config key '{where}': {name} cannot take these arguments: {err}.") from None


def safe_instantiate(cfg: Any, prefixes: Sequence[str], *, config_key: str = "", **kwargs: Any) -> Any:
    """Resolve ``cfg``, check every ``_target_`` in the result, then build exactly that result.

    Args:
        cfg: an OmegaConf node (interpolations resolved against its root) or plain containers.
        config_key: where ``cfg`` sits in the whole config, for error messages.
        kwargs: arguments the builder wires in (``input_dims``, ``model``...), passed as they are.

    Raises:
        TargetNotAllowedError: a ``_target_`` (also one made by a resolver) outside ``prefixes``.
    """
    tree = resolved_tree(cfg, config_key)
    check_targets(tree, prefixes, config_key)
    return build_tree(tree, prefixes, config_key, kwargs)

"""Check a composed config before anything is built: targets allowed, arguments bind."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from mmtrain.config.compose import ConfigError
from mmtrain.config.targets import check_targets, locate_allowed

T = TypeVar("T")
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}

#: Attribute holding what a target declares it is given in code (see :func:`injects`).
INJECTS_ATTR = "__mmtrain_injects__"


def injects(**arguments: Iterable[str]) -> Callable[[T], T]:
    """Declare, on a builder or class a config's ``_target_`` names, the arguments mmtrain passes in code
    (never written in YAML): ``own`` for the target's own arguments, any other keyword for the node
    below it of that name (``fusion=["input_dims"]``: the ``fusion`` node's target gets ``input_dims``).

    The declaration sits beside the code that passes the arguments, so a new model or task kind adds
    its own and nothing central lists kinds. Inherited by subclasses.
    """
    declared = {("" if key == "own" else key): frozenset(values) for key, values in arguments.items()}

    def mark(target: T) -> T:
        setattr(target, INJECTS_ATTR, declared)
        return target

    return mark


def injected_arguments(key: str, targets: Mapping[str, Any]) -> frozenset[str]:
    """Arguments the node at ``key`` is given in code: its own target's ``own`` declaration plus what the
    nearest target above it declares for the path down to it (see :func:`injects`)."""
    names = set(getattr(targets[key], INJECTS_ATTR, {}).get("", ()))
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:end])
        if parent in targets:
            names |= getattr(targets[parent], INJECTS_ATTR, {}).get(".".join(parts[end:]), frozenset())
            break
    return frozenset(names)


#: Keys the builders take out of a node before building it (``data.prepare`` runs first, alone;
#: ``model.init`` loads earlier weights after the model is built).
CONSUMED: dict[str, frozenset[str]] = {
    "data": frozenset({"prepare"}),
    "model": frozenset({"init", "gradient_checkpointing", "attn_implementation"}),  # applied after the build
}


#: Top-level keys whose interpolations resolve later (a pipeline's stage overrides use ``${stage:...}``).
UNRESOLVED = frozenset({"stages"})


def target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Yield ``(key, node)`` for every mapping with a ``_target_`` in a resolved plain tree."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield path or "<root>", node
        for key, value in node.items():
            yield from target_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from target_nodes(value, f"{path}[{index}]")


def check_signature(
    key: str, node: Mapping[str, Any], target: Any, injected: frozenset[str], consumed: frozenset[str] = frozenset()
) -> None:
    """Every argument in ``node`` exists on ``target``; every required one is given or injected.

    ``consumed`` keys are taken out by the builder before the target is called.
    """
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    given = {str(k) for k in node.keys()} - HYDRA_KEYS - consumed
    name = getattr(target, "__qualname__", str(target))
    if not takes_any:
        unknown = sorted(given - set(params))
        if unknown:
            import difflib

            accepted = sorted(n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
            close = difflib.get_close_matches(unknown[0], accepted, n=2, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(f'{key}.{c}') for c in close)}?" if close else ""
            raise ConfigError(
                f"config key '{key}.{unknown[0]}': {name} has no argument '{unknown[0]}'.{hint} "
                f"Its arguments: {accepted}."
            )
    if node.get("_partial_", False):
        return
    required = {
        n for n, p in params.items()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n != "self"
    }
    missing = sorted(required - given - injected)
    if missing:
        raise ConfigError(f"config key '{key}': {name} needs argument(s) {missing}, which the config does not set.")


def validate_config(cfg: DictConfig, prefixes: Sequence[str], sections: Sequence[str] | None = None) -> None:
    """Resolve the config, allowlist every ``_target_`` of the result (before importing any), then
    bind every node's arguments.

    Targets are checked after resolution, so a ``_target_`` node that an interpolation or a resolver
    (``${oc.create:...}``) brings into a section is checked like one written there; what is built
    later (:func:`mmtrain.config.instantiate.safe_instantiate`) is resolved and checked again.

    Args:
        cfg: a composed config.
        prefixes: the allowed ``_target_`` prefixes.
        sections: top-level keys to check (default: all).
    """
    trees: dict[str, Any] = {}
    try:
        for key in cfg.keys():
            if key in UNRESOLVED:
                continue
            node = cfg._get_node(key)
            if isinstance(node, (DictConfig, ListConfig)):
                trees[str(key)] = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
            else:
                trees[str(key)] = cfg[key]  # resolves a leaf (raises on a bad interpolation or ???)
    except Exception as err:  # interpolation or missing value: name it
        raise ConfigError(f"config does not resolve: {err}") from err
    keys = [k for k in (sections if sections is not None else trees) if trees.get(k) is not None]
    for section in keys:
        check_targets(trees[section], prefixes, section)
    for section in keys:
        nodes = dict(target_nodes(trees[section], section))
        targets = {key: locate_allowed(str(node["_target_"]), prefixes, key) for key, node in nodes.items()}
        for key, node in nodes.items():
            check_signature(key, node, targets[key], injected_arguments(key, targets), CONSUMED.get(key, frozenset()))

"""Allowlisted ``_target_`` resolution: nothing is imported unless the config is allowed to name it.

Every ``_target_`` in a config tree is checked against ``allowed_target_prefixes`` *before* any
import happens. A prefix matches on dotted-name boundaries (``mmtrain.`` allows
``mmtrain.components.fusion.concat.ConcatPoolFusion``, never ``mmtrain_evil.x``). After the string check,
the target is located attribute by attribute and every hop must stay inside an allowed module,
so an allowed package cannot be used as a trampoline (``torch.optim.optimizer.os.system``).
"""

from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig

#: What mmtrain itself needs; users add prefixes with ``allowed_target_prefixes`` in their config.
DEFAULT_ALLOWED_PREFIXES: tuple[str, ...] = (
    "mmtrain.",
    "torch.optim.",
    "torch.nn.",
    "transformers.optimization.",
    "lightning.pytorch.callbacks.",
    "lightning.pytorch.loggers.",
    "lightning.pytorch.strategies.",
)


class TargetNotAllowedError(ValueError):
    """A ``_target_`` outside the allowlist, or one that escapes it through an attribute hop."""


def _normalise(prefixes: Iterable[str]) -> tuple[str, ...]:
    return tuple(p if p.endswith(".") else p + "." for p in prefixes if p)


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    dotted = name + "."
    return any(dotted.startswith(p) for p in prefixes)


def narrow_prefixes(runtime: Iterable[str], stored: Iterable[str] | None) -> tuple[str, ...]:
    """Prefixes for loading a stored config (checkpoint or export): it may narrow, never widen.

    Args:
        runtime: what the running user allows (defaults plus their own additions).
        stored: the list saved with the artifact, or ``None`` if it carries none.

    Returns:
        The stored prefixes that the runtime list also covers.
    """
    allowed = _normalise(runtime)
    if stored is None:
        return allowed
    return tuple(p for p in _normalise(stored) if _matches(p.rstrip("."), allowed))


def iter_targets(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(config_key, target)`` for every ``_target_`` in a (nested) config, without importing."""
    if isinstance(node, (DictConfig, Mapping)):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for key, value in items:
            child = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield (path or "<root>", str(value))
            else:
                yield from iter_targets(value, child)
    elif isinstance(node, (ListConfig, list, tuple)):
        for index, value in enumerate(node):
            yield from iter_targets(value, f"{path}[{index}]")


#: Modules of mmtrain 0.1's flat layout -> where they live now (longest prefix first), so the configs
#: inside checkpoints and export folders written before the layered layout still build.
MOVED_MODULES = (
    ("mmtrain.hf.modeling.", "mmtrain.models.multimodal."),
    *((f"mmtrain.hf.specs.build_{kind}_model", f"mmtrain.models.{kind}.build_{kind}_model")
      for kind in ("multimodal", "pairwise", "contrastive", "llm")),
    ("mmtrain.hf.specs.", "mmtrain.models.registry."),
    ("mmtrain.hf.", "mmtrain.models."),
    ("mmtrain.training.callbacks.", "mmtrain.engine.callbacks.export."),
    *((f"mmtrain.training.{name}.", f"mmtrain.engine.callbacks.{name}.")
      for name in ("audit", "ledger", "signals", "checkpointing", "resume", "threads", "faults")),
    *((f"mmtrain.{name}.", f"mmtrain.components.{name}.")
      for name in ("encoders", "fusion", "heads", "losses", "metrics", "lm", "decoders")),
    ("mmtrain.tasks.", "mmtrain.engine.tasks."),
)


def current_target(target: str) -> str:
    """``target`` under the package layout of this version (see :data:`MOVED_MODULES`)."""
    for old, new in MOVED_MODULES:
        if target == old or (old.endswith(".") and target.startswith(old)):
            return new + target[len(old):]
    return target


def locate_allowed(target: str, prefixes: Sequence[str], key: str = "<root>") -> Any:
    """Import and return ``target`` if it and every hop to it lie inside ``prefixes``.

    A target written by an earlier mmtrain layout (``mmtrain.encoders.conv1d...``) is found where it
    lives now (:func:`current_target`); the allowlist is checked on both names.

    Raises:
        TargetNotAllowedError: naming ``key`` and ``target`` when refused.
    """
    prefixes = _normalise(prefixes)
    if _matches(target, prefixes):
        target = current_target(target)
    if not _matches(target, prefixes):
        raise TargetNotAllowedError(
            f"config key '{key}': _target_ '{target}' is not allowed. Allowed prefixes: "
            f"{list(prefixes)}. If you trust it, add its prefix to allowed_target_prefixes."
        )
    parts = target.split(".")
    obj: Any = None
    module_end = 0
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if not _matches(name, prefixes) and end < len(parts):
            break
        try:
            obj = importlib.import_module(name)
            module_end = end
            break
        except ModuleNotFoundError as err:
            if err.name is not None and not name.startswith(err.name):
                raise
            continue
    if obj is None:
        raise TargetNotAllowedError(f"config key '{key}': cannot import any module of '{target}'.")
    for attr in parts[module_end:]:
        try:
            obj = getattr(obj, attr)
        except AttributeError as err:
            raise TargetNotAllowedError(f"config key '{key}': '{target}' does not exist ({err}).") from err
        _check_hop(obj, target, prefixes, key)
    _check_hop(obj, target, prefixes, key)
    return obj


def _check_hop(obj: Any, target: str, prefixes: Sequence[str], key: str) -> None:
    if isinstance(obj, types.ModuleType):
        home = obj.__name__
    elif inspect.isclass(obj) or inspect.isroutine(obj):
        home = getattr(obj, "__module__", None) or ""
    else:
        raise TargetNotAllowedError(
            f"config key '{key}': _target_ '{target}' resolves to a {type(obj).__name__}, "
            "not a class, function or module."
        )
    if not _matches(home, prefixes):
        raise TargetNotAllowedError(
            f"config key '{key}': _target_ '{target}' leads to '{home}', outside the allowed "
            f"prefixes {list(prefixes)}."
        )


def check_targets(cfg: Any, prefixes: Sequence[str], path: str = "") -> None:
    """Check every ``_target_`` in ``cfg``: all strings first (no import), then the hops.

    Args:
        path: the config key of ``cfg`` itself, so refusals name the full key.
    """
    found = list(iter_targets(cfg, path))
    normal = _normalise(prefixes)
    for key, target in found:
        if not _matches(target, normal):
            locate_allowed(target, normal, key)  # raises with the message
    for key, target in found:
        locate_allowed(target, normal, key)


_SESSION_PREFIXES: list[str] = []


def allow_prefixes(prefixes: Iterable[str]) -> None:
    """Add prefixes the user running this process trusts (their composed config or a flag)."""
    for prefix in _normalise(prefixes):
        if prefix not in _SESSION_PREFIXES:
            _SESSION_PREFIXES.append(prefix)


def runtime_prefixes() -> tuple[str, ...]:
    """Defaults, plus ``MMTRAIN_ALLOWED_TARGET_PREFIXES`` (comma-separated), plus :func:`allow_prefixes`."""
    import os

    extra = [p.strip() for p in os.environ.get("MMTRAIN_ALLOWED_TARGET_PREFIXES", "").split(",")]
    return _normalise([*DEFAULT_ALLOWED_PREFIXES, *extra, *_SESSION_PREFIXES])

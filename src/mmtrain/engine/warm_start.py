"""``model.init``: start components from the weights of an earlier run (two-stage training).

``model.init`` maps a component of the model being built (an encoder slot such as ``video``, or
``fusion``, ``head``, ``projection``) to an earlier run directory or export folder::

    model:
      init:
        video: outputs/stage1_video/2026-11-22_10-00-00      # same component name there
        audio: {from: outputs/stage1/audio/export, component: audio}

The component's weights are read from that export's ``model.safetensors`` (never pickle) and
must fit exactly: a missing, unexpected or differently shaped tensor is an error naming the
``model.init`` key. Only the training run uses it: the export written afterwards holds every
weight itself, so it never points back at the earlier run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from mmtrain.config.plain import plain
from mmtrain.models.base import WEIGHTS_NAME, MultimodalPreTrainedModel
from mmtrain.engine.export import find_export

log = logging.getLogger(__name__)


def _source(name: str, entry: Any) -> tuple[Path, str]:
    """``(export folder, component name there)`` of one ``model.init`` entry."""
    key = f"model.init.{name}"
    if isinstance(entry, (str, Path)):
        path, component = entry, name
    elif isinstance(entry, Mapping) and "from" in entry and set(entry) <= {"from", "component"}:
        path, component = entry["from"], str(entry.get("component") or name)
    else:
        raise ValueError(
            f"{key}: give a run directory / export folder, or {{from: <dir>, component: <name>}}; got {entry!r}"
        )
    try:
        return find_export(str(path)), component  # its manifest verified: size + sha256 (+ signature)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{key}: {err}") from err


def _prefix(model: MultimodalPreTrainedModel, component: str) -> str:
    """Parameter-name prefix of ``component`` inside ``model`` (``encoders.<slot>.`` or ``<part>.``)."""
    return f"encoders.{component}." if component in model.encoders else f"{component}."


def load_components(model: MultimodalPreTrainedModel, init: Mapping[str, Any] | None) -> dict[str, str]:
    """Load each ``init`` component's weights from its source export; returns name -> source.

    Raises:
        ValueError: an unknown component, or weights that do not fit it (names the tensors).
        FileNotFoundError: the source is neither a run directory nor an export folder.
    """
    loaded: dict[str, str] = {}
    parts = model.components()
    for name, entry in (plain(init) or {}).items():
        key = f"model.init.{name}"
        if name not in parts:
            raise ValueError(f"{key}: the model has no component '{name}'; its components: {sorted(parts)}")
        folder, component = _source(name, entry)
        weights = load_file(str(folder / WEIGHTS_NAME))
        source_prefix = f"encoders.{component}."
        if not any(k.startswith(source_prefix) for k in weights):
            source_prefix = f"{component}."
        state = {k[len(source_prefix):]: v for k, v in weights.items() if k.startswith(source_prefix)}
        if not state:
            found = sorted({k.split(".")[1] if k.startswith("encoders.") else k.split(".")[0] for k in weights})
            raise ValueError(f"{key}: {folder} has no component '{component}' (it has {found}).")
        target = parts[name]
        own = target.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
        if missing or unexpected or shapes:
            details = "; ".join(
                f"{what} {names[:5]}" for what, names in
                (("missing", missing), ("unexpected", unexpected), ("different shape", shapes)) if names
            )
            raise ValueError(
                f"{key}: the weights of '{component}' in {folder} do not fit this model's '{name}' "
                f"({details}); configure the same {_prefix(model, name).rstrip('.')} as the earlier run."
            )
        target.load_state_dict(state, strict=True)
        loaded[name] = str(folder)
        log.info("model.init.%s: loaded %d tensors from %s", name, len(state), folder)
    return loaded

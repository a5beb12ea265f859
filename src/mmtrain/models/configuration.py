"""``MultimodalConfig``: the component specs of a model, in Hugging Face config form."""

from __future__ import annotations

import copy
from typing import Any

from transformers import PretrainedConfig

from mmtrain.config.instantiate import InterpolationInArtifactError, refuse_interpolations
from mmtrain.config.targets import DEFAULT_ALLOWED_PREFIXES

PRETRAINED_KEY = "pretrained_path"


def strip_pretrained_paths(spec: Any) -> Any:
    """Copy of ``spec`` with every ``pretrained_path`` set to ``None``.

    An exported model carries each tower's full config in its spec and all weights in one
    safetensors file, so it must never reach back to the folders it was trained from.
    """
    if isinstance(spec, dict):
        return {
            key: (None if key == PRETRAINED_KEY else strip_pretrained_paths(value))
            for key, value in spec.items()
        }
    if isinstance(spec, list):
        return [strip_pretrained_paths(value) for value in spec]
    return spec


class MultimodalConfig(PretrainedConfig):
    """Specs (``_target_`` + keyword arguments) of the encoders, fusion and head of a model.

    Args:
        encoders: modality name -> encoder spec.
        fusion: fusion spec; ``input_dims`` is filled in by the model from the encoders.
        head: head spec; ``input_dim`` and ``num_labels`` are filled in by the model.
        trainable: component name (``"video"``, ``"fusion"``, ``"head"``...) -> bool.
        aux_heads: encoder slots with an auxiliary classifier of their own (a classifier's).
        allowed_target_prefixes: the import allowlist the specs were written for.
    """

    model_type = "mmtrain_multimodal"
    #: Fields holding component specs (their ``pretrained_path`` values are not exported).
    spec_keys = ("encoders", "fusion", "head")  # no annotation: a class constant, not a config field

    encoders: dict[str, Any] | None = None
    fusion: dict[str, Any] | None = None
    head: dict[str, Any] | None = None
    trainable: dict[str, bool] | None = None
    allowed_target_prefixes: list[str] | None = None
    aux_heads: list[str] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.encoders = copy.deepcopy(self.encoders) or {}
        self.trainable = dict(self.trainable or {})
        if self.allowed_target_prefixes is None:
            self.allowed_target_prefixes = list(DEFAULT_ALLOWED_PREFIXES)
        super().__post_init__(**kwargs)
        # Specs are built as plain data (their strings are never read as interpolations); one that
        # holds '${' was written by hand into a config.json: refuse it by name rather than build it.
        refuse_interpolations({key: getattr(self, key, None) for key in self.spec_keys},
                              f"config.json ({type(self).__name__})")
        if self.id2label and not self.label2id:
            self.label2id = {label: int(index) for index, label in self.id2label.items()}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """``PretrainedConfig.from_pretrained``; a spec holding an interpolation names the file."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except InterpolationInArtifactError as err:
            raise InterpolationInArtifactError(f"{pretrained_model_name_or_path}/config.json", err.keys) from None

    def to_dict(self) -> dict[str, Any]:
        """Serialisable dict; pretrained folder paths are dropped (see :func:`strip_pretrained_paths`)."""
        output = super().to_dict()
        for key in self.spec_keys:
            output[key] = strip_pretrained_paths(output.get(key))
        return output

"""The regression kind: encoders -> fusion -> a head with ``num_outputs`` continuous values.

A sample's float target (``target_key`` of a data format, e.g. a CH-SIMS-style sentiment score in
[-1, 1]) reaches the model as ``labels`` [B, num_outputs] float; ``forward`` returns the predictions as
``logits`` [B, num_outputs] and, with labels, the configured loss (``mse``, ``l1`` or ``huber``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mmtrain.config.validate import injects
from mmtrain.models.configuration import MultimodalConfig
from mmtrain.models.multimodal import MultimodalModel
from mmtrain.models.registry import ModelKind, config_fields, register_model_kind

#: ``loss`` setting -> the loss on ``(predictions, targets)``.
LOSSES = {"mse": nn.functional.mse_loss, "l1": nn.functional.l1_loss, "huber": nn.functional.huber_loss}


class RegressionConfig(MultimodalConfig):
    """Specs of a regressor: ``encoders``, ``fusion``, ``head`` (``input_dim`` and ``num_outputs`` filled
    in by the model).

    Args (beyond :class:`MultimodalConfig`):
        num_outputs: how many values a sample has (1 for one score).
        target_names: a name per output (``predict`` shows them), default ``value`` / ``value_<i>``.
        loss: ``mse``, ``l1`` or ``huber`` (what ``forward`` returns with ``labels``).
    """

    model_type = "mmtrain_regression"

    num_outputs: int = 1
    target_names: list[str] | None = None
    loss: str = "mse"

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if int(self.num_outputs) < 1:
            raise ValueError(f"model.num_outputs must be >= 1, got {self.num_outputs}")
        if self.loss not in LOSSES:
            raise ValueError(f"model.loss: unknown loss {self.loss!r}; choose one of {sorted(LOSSES)}")
        names = list(self.target_names or (["value"] if self.num_outputs == 1 else
                                           [f"value_{i}" for i in range(self.num_outputs)]))
        if len(names) != int(self.num_outputs):
            raise ValueError(f"model.target_names has {len(names)} names for num_outputs={self.num_outputs}")
        self.target_names = names


class RegressionModel(MultimodalModel):
    """Encoders -> fusion -> a head with ``num_outputs`` values: forward takes the processor's batch (as
    :class:`~mmtrain.models.multimodal.MultimodalModel`) and returns ``logits`` [B, num_outputs] (the
    predicted values), plus the configured ``loss`` with ``labels`` [B, num_outputs] float."""

    config_class = RegressionConfig

    def head_arguments(self) -> dict[str, int]:
        return {"num_outputs": int(self.config.num_outputs)}

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return LOSSES[self.config.loss](logits, labels.to(logits.dtype).reshape(logits.shape))


@injects(own=["id2label", "allowed_target_prefixes"], fusion=["input_dims"], head=["input_dim", "num_outputs"])
def build_regression_model(
    *,
    encoders: Mapping[str, Any],
    fusion: Mapping[str, Any],
    head: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    num_outputs: int = 1,
    target_names: Sequence[str] | None = None,
    loss: str = "mse",
    trainable: Mapping[str, bool] | None = None,
    aux_heads: Sequence[str] | None = None,
) -> RegressionModel:
    """Build a regressor from its component specs (the ``model`` config node).

    Args: as :func:`~mmtrain.models.multimodal.build_multimodal_model` (``id2label``, the data's label
    map if it has one, is only stored), plus ``num_outputs``, ``target_names`` and ``loss`` (see
    :class:`RegressionConfig`); ``aux_heads``: encoder slots that also get their own regressor (the ``head``
    spec on that slot's pooled output; ``task.aux_weights``).
    """
    return RegressionModel(RegressionConfig(
        **config_fields(encoders=encoders, fusion=fusion, head=head, id2label=id2label,
                        allowed_target_prefixes=allowed_target_prefixes, trainable=trainable),
        num_outputs=int(num_outputs), target_names=None if target_names is None else [str(n) for n in target_names],
        loss=str(loss), aux_heads=[str(slot) for slot in (aux_heads or [])],
    ))


def predict_values(model: RegressionModel, processor: Any, batch: dict[str, Any],
                   **options: Any) -> list[dict[str, Any]]:
    """``predict`` of a regressor: per sample, each output's predicted value, by name."""
    batch.pop("labels", None)
    with torch.no_grad():
        values = model(**batch).logits.float()  # [B, K]
    names = model.config.target_names
    return [{"prediction": {name: round(float(v), 6) for name, v in zip(names, row.tolist())}} for row in values]


KIND = register_model_kind(ModelKind(
    name="regression", config_class=RegressionConfig, model_class=RegressionModel, builder=build_regression_model,
    predict=predict_values, auto_classes=("AutoModel",),
))

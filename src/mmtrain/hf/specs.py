"""From config nodes to a :class:`MultimodalModel` or :class:`PairwiseModel`: pretrained towers made
self-contained first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from transformers import AutoConfig

from mmtrain.config.plain import plain
from mmtrain.hf.configuration import PRETRAINED_KEY, MultimodalConfig
from mmtrain.hf.contrastive import ContrastiveConfig, ContrastiveModel
from mmtrain.hf.llm import LLMConfig, LLMModel
from mmtrain.hf.modeling import MultimodalModel
from mmtrain.hf.pairwise import PairwiseConfig, PairwiseModel
from mmtrain.paths import resolve_pretrained_path


def embed_pretrained_configs(spec: Any, key: str = "model") -> Any:
    """Copy of ``spec`` where each node with a ``pretrained_path`` also holds that folder's full config.

    The folder's ``config.json`` (read by ``AutoConfig``, no code imported) is merged under the
    node's own ``config`` overrides, so the spec alone can rebuild the architecture after export.
    """
    if isinstance(spec, Mapping):
        node = {k: embed_pretrained_configs(v, f"{key}.{k}") for k, v in spec.items()}
        path = node.get(PRETRAINED_KEY)
        if path:
            folder = resolve_pretrained_path(path, what=f"{key}.{PRETRAINED_KEY}")
            full = AutoConfig.from_pretrained(str(folder)).to_dict()
            full.pop("_name_or_path", None)  # where it came from; the export must not point there
            full.update(node.get("config") or {})
            node["config"] = full
        return node
    if isinstance(spec, list):
        return [embed_pretrained_configs(v, f"{key}[{i}]") for i, v in enumerate(spec)]
    return spec


def build_multimodal_model(
    *,
    encoders: Mapping[str, Any],
    fusion: Mapping[str, Any],
    head: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    trainable: Mapping[str, bool] | None = None,
) -> MultimodalModel:
    """Build the model from its component specs (the ``model`` config node, not recursively built).

    Args:
        encoders: slot name (modality) -> encoder spec.
        fusion, head: specs; their input sizes and the class count are wired in by the model.
        id2label: class index -> name, from the data's label map.
        allowed_target_prefixes: import allowlist stored with the model.
        trainable: component -> whether it trains.
    """
    return MultimodalModel(MultimodalConfig(**config_fields(
        encoders=encoders, fusion=fusion, head=head, id2label=id2label,
        allowed_target_prefixes=allowed_target_prefixes, trainable=trainable,
    )))


def build_pairwise_model(
    *,
    encoders: Mapping[str, Any],
    fusion: Mapping[str, Any],
    head: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    trainable: Mapping[str, bool] | None = None,
) -> PairwiseModel:
    """Build a pairwise comparator (First / Second / Similar) from its component specs.

    Args: as :func:`build_multimodal_model`; ``fusion`` runs on each item of a pair, ``head``
    (e.g. ``PairComparisonHead``) compares the two fused item vectors.
    """
    return PairwiseModel(PairwiseConfig(**config_fields(
        encoders=encoders, fusion=fusion, head=head, id2label=id2label,
        allowed_target_prefixes=allowed_target_prefixes, trainable=trainable,
    )))


def build_contrastive_model(
    *,
    encoders: Mapping[str, Any],
    projection: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    trainable: Mapping[str, bool] | None = None,
) -> ContrastiveModel:
    """Build a contrastive dual/tri-encoder: each encoder slot gets its own projection head.

    Args: as :func:`build_multimodal_model`; ``projection`` is one ``ProjectionHead`` spec, built
    once per slot with ``input_dim`` = that encoder's ``output_dim``. ``id2label`` (the data's
    classes, possibly none) is only stored. There is no fusion and no classification head.
    """
    return ContrastiveModel(ContrastiveConfig(**config_fields(
        encoders=encoders, projection=projection, id2label=id2label,
        allowed_target_prefixes=allowed_target_prefixes, trainable=trainable,
    )))


def build_llm_model(
    *,
    encoders: Mapping[str, Any],
    projector: Mapping[str, Any],
    decoder: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    lm_vocab_size: int,
    media_token_ids: Mapping[str, int],
    head: Mapping[str, Any] | None = None,
    class_token_id: int | None = None,
    trainable: Mapping[str, bool] | None = None,
    lora: Mapping[str, Any] | None = None,
) -> LLMModel:
    """Build an LLM-decoder model: encoders -> per-slot projector -> pseudo-tokens in a causal LM.

    Args: as :func:`build_multimodal_model`, plus ``projector`` (one spec, built per slot),
    ``decoder`` (causal LM spec), ``head`` (classifier at the class token, or ``None``), and the
    prompt tokenizer's facts: ``lm_vocab_size``, ``media_token_ids`` (slot -> placeholder id) and
    ``class_token_id`` (see :class:`mmtrain.lm.prompt.PromptBuilder`). ``lora``: LoRA on the LM
    (``r``, ``alpha``, ``dropout``, ``target_modules``, ``quantize``; see :mod:`mmtrain.lm.lora`) or ``None``.
    """
    parts = {"projector": projector, "decoder": decoder, **({"head": head} if head else {})}
    return LLMModel(LLMConfig(
        **config_fields(encoders=encoders, id2label=id2label, allowed_target_prefixes=allowed_target_prefixes,
                        trainable=trainable, **parts),
        lm_vocab_size=int(lm_vocab_size), media_token_ids={str(k): int(v) for k, v in plain(media_token_ids).items()},
        class_token_id=None if class_token_id is None else int(class_token_id),
        lora=None if lora is None else dict(plain(lora)),
    ))


def config_fields(
    *,
    encoders: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    trainable: Mapping[str, bool] | None,
    **parts: Mapping[str, Any],
) -> dict[str, Any]:
    """Config keyword arguments shared by the model kinds: plain specs with pretrained configs embedded.

    ``parts`` are the kind's own component specs (``fusion`` and ``head``, or ``projection``...).
    """
    return {
        "encoders": {name: embed_pretrained_configs(plain(s), f"model.encoders.{name}") for name, s in plain(encoders).items()},
        **{key: embed_pretrained_configs(plain(spec), f"model.{key}") for key, spec in parts.items()},
        "trainable": dict(plain(trainable) or {}),
        "allowed_target_prefixes": list(allowed_target_prefixes),
        "id2label": {int(k): str(v) for k, v in id2label.items()},
    }

"""One registry of model kinds: each kind declares itself once, in its own module, with
:func:`register_model_kind`; everything that differs by kind (Auto registration, what ``predict``
returns, which arguments its builder injects) reads that declaration.

Importing :mod:`mmtrain.models` imports every module of the package, so every kind there is registered
(and its classes with transformers' Auto classes); a kind in another package registers when its module
is imported (e.g. by the config's ``_target_``).

Also here: what the kinds' builders share (pretrained configs embedded in the specs).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mmtrain.components.paths import resolve_pretrained_path
from mmtrain.config.plain import plain
from mmtrain.models.configuration import PRETRAINED_KEY

#: ``predict(model, processor, batch, **options) -> [dict per sample]`` of a kind: what ``mmtrain predict``
#: prints for one sample and writes as one row per sample of a batch prediction.
Predict = Callable[..., list[dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """A model kind, declared once beside its classes.

    Attributes:
        name: short name (``multimodal``, ``pairwise``...).
        config_class, model_class: the ``PretrainedConfig`` / ``PreTrainedModel`` pair.
        builder: what the config's ``model._target_`` names; its injected arguments are declared on
            it with :func:`mmtrain.config.validate.injects`.
        predict: a processed batch through the model -> one JSON-ready dict per sample (what ``mmtrain
            predict`` prints, one row of a batch prediction).
        auto_classes: transformers Auto classes the model registers with (``AutoModel``...).
        processor: whether ``AutoProcessor`` loads the kind's ``MultimodalProcessor``.
        item_pairs: whether a sample holds two items of each modality (``predict`` checks it).
        predict_options: the ``predict`` keyword options the kind takes (``choices``...).
        processor_class: what loads an export's processor (``from_pretrained(folder)``); ``None``:
            ``AutoProcessor`` (the kind's ``MultimodalProcessor``).
    """

    name: str
    config_class: type
    model_class: type
    builder: Callable[..., Any]
    predict: Predict
    auto_classes: tuple[str, ...] = ("AutoModel",)
    processor: bool = True
    item_pairs: bool = False
    predict_options: frozenset[str] = frozenset()
    processor_class: type | None = None

    def load_processor(self, folder: Any) -> Any:
        """The processor saved in export ``folder``."""
        if self.processor_class is not None:
            return self.processor_class.from_pretrained(folder)
        import json
        from pathlib import Path

        import transformers

        saved = Path(folder) / "processor_config.json"
        if saved.is_file() and json.loads(saved.read_text()).get("processor_class") == "TextTowerProcessor":
            from mmtrain.models.text_tower_processor import TextTowerProcessor  # two tokenizers (not an Auto class)

            return TextTowerProcessor.from_pretrained(str(folder))

        return transformers.AutoProcessor.from_pretrained(str(folder))


_KINDS: dict[str, ModelKind] = {}


def register_model_kind(kind: ModelKind) -> ModelKind:
    """Add ``kind`` (idempotent) and register its classes with transformers' Auto classes."""
    import transformers

    from mmtrain.models.processing import MultimodalProcessor

    _KINDS[kind.name] = kind
    transformers.AutoConfig.register(kind.config_class.model_type, kind.config_class, exist_ok=True)
    for auto in kind.auto_classes:
        getattr(transformers, auto).register(kind.config_class, kind.model_class, exist_ok=True)
    if kind.processor:
        transformers.AutoProcessor.register(kind.config_class, MultimodalProcessor, exist_ok=True)
    return kind


def model_kinds() -> dict[str, ModelKind]:
    """Every registered kind, by name (the modules of :mod:`mmtrain.models` imported first)."""
    import mmtrain.models as package

    for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
        importlib.import_module(module.name)
    return dict(_KINDS)


def kind_of(model: Any) -> ModelKind:
    """The kind of a built model: the registered kind of the nearest class in its MRO."""
    kinds = {kind.model_class: kind for kind in model_kinds().values()}
    for cls in type(model).__mro__:
        if cls in kinds:
            return kinds[cls]
    raise ValueError(f"{type(model).__qualname__} is not a registered mmtrain model kind "
                     f"(known: {sorted(model_kinds())}); register it with register_model_kind.")


def embed_pretrained_configs(spec: Any, key: str = "model") -> Any:
    """Copy of ``spec`` where each node with a ``pretrained_path`` also holds that folder's full config.

    The folder's ``config.json`` (read by ``AutoConfig``, no code imported) is merged under the
    node's own ``config`` overrides, so the spec alone can rebuild the architecture after export.
    """
    from transformers import AutoConfig

    if isinstance(spec, Mapping):
        node = {k: embed_pretrained_configs(v, f"{key}.{k}") for k, v in spec.items()}
        path = node.get(PRETRAINED_KEY)
        if path:
            folder = resolve_pretrained_path(path, what=f"{key}.{PRETRAINED_KEY}")
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"{key}.{PRETRAINED_KEY}: {folder} has no config.json: it is not a model saved "
                                        "with save_pretrained (or a Hub snapshot of one); point it at the model's folder.")
            full = AutoConfig.from_pretrained(str(folder)).to_dict()
            full.pop("_name_or_path", None)  # where it came from; the export must not point there
            full.update(node.get("config") or {})
            node["config"] = full
        return node
    if isinstance(spec, list):
        return [embed_pretrained_configs(v, f"{key}[{i}]") for i, v in enumerate(spec)]
    return spec


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


def predict_label(model: Any, processor: Any, batch: Mapping[str, Any], **options: Any) -> list[dict[str, Any]]:
    """``predict`` of a classifier kind: per sample, the likeliest label and every class's probability."""
    import torch

    with torch.no_grad():
        probs = model(**batch).logits.float().softmax(-1)  # [B, C]
    names = model.config.id2label
    return [{"label": names[int(row.argmax())],
             "probabilities": {names[i]: round(float(p), 6) for i, p in enumerate(row.tolist())}} for row in probs]

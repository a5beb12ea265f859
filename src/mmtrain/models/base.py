"""What every mmtrain model kind shares: encoder slots, save/load, freezing, pre-flight checks.

The kinds (classifier, contrastive dual/tri-encoder, pairwise comparator) differ only in what
sits after the encoders; they subclass :class:`MultimodalPreTrainedModel`, which builds the
encoder slots from the config, writes and reads the one export format (``config.json`` +
``model.safetensors`` with exact module names) and freezes components by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import PreTrainedModel

from mmtrain.config.instantiate import safe_instantiate
from mmtrain.config.targets import narrow_prefixes, runtime_prefixes
from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.data.cached_features import CACHED_KEY
from mmtrain.models.configuration import MultimodalConfig
from mmtrain.core.integrity import update_manifest, verify_folder

WEIGHTS_NAME = "model.safetensors"

#: Batch keys each modality's encoder may take (Hugging Face names).
MODALITY_INPUTS: dict[str, tuple[str, ...]] = {
    "image": ("pixel_values",),
    "video": ("pixel_values_videos", "video_attention_mask"),
    "audio": ("input_features", "input_values", "audio_attention_mask"),
    "text": ("input_ids", "attention_mask", "token_type_ids"),
}


def modality_of(name: str) -> str:
    """Modality of an encoder slot: its name, or the part before ``_`` (``image_2`` -> ``image``)."""
    if name in MODALITY_INPUTS:
        return name
    base = name.split("_")[0]
    if base in MODALITY_INPUTS:
        return base
    raise ValueError(
        f"encoder slot '{name}' names no known modality; use one of {sorted(MODALITY_INPUTS)} "
        "(optionally with a suffix such as 'image_2')."
    )


#: Dimensions of each model input WITH the item axis (``pixel_values`` [B,K,C,H,W] -> 5).
ITEM_NDIM: dict[str, int] = {
    "pixel_values": 5,
    "pixel_values_videos": 6,
    "video_attention_mask": 3,
    "input_features": 4,
    "input_values": 3,
    "audio_attention_mask": 3,
    "input_ids": 3,
    "attention_mask": 3,
    "token_type_ids": 3,
}


def flatten_item_inputs(
    batch: Mapping[str, Any], slots: Iterable[str], *, kind: str, hint: str = ""
) -> tuple[dict[str, Any], int, int]:
    """``batch`` with the inputs of ``slots``' modalities ``[B, K, ...]`` -> ``[B*K, ...]`` (item-major per sample).

    Samples that hold a list of K items of a modality (pairs: K=2; several images in one prompt) get an
    item axis from the processor. Presence masks ``<name>_present`` [B] are repeated per item; other
    entries pass unchanged.

    Returns:
        ``(flat_batch, B, K)``.

    Raises:
        ValueError: an input lacks the item axis (``kind`` and ``hint`` say what to do), or inputs disagree
            on B or K.
    """
    keys = {key for name in slots for key in MODALITY_INPUTS[modality_of(name)]}
    flat: dict[str, Any] = {}
    sizes: set[tuple[int, int]] = set()
    for key, value in batch.items():
        if key not in keys or value is None:
            continue
        want = ITEM_NDIM.get(key)
        if want is not None and value.dim() != want:
            missing = value.dim() == want - 1
            raise ValueError(
                f"{kind} needs '{key}' with an item axis [B, K, ...] ({want} dims), got {tuple(value.shape)}"
                + (f": the data gives single items. {hint}" if missing else ".")
            )
        sizes.add((int(value.shape[0]), int(value.shape[1])))
        flat[key] = value.reshape(value.shape[0] * value.shape[1], *value.shape[2:])
    if not sizes:
        raise ValueError(f"batch has no input for the encoders {sorted(slots)}; got keys {sorted(batch)}.")
    if len(sizes) > 1:
        raise ValueError(f"modality inputs disagree on [B, K]: {sorted(sizes)}.")
    (b, k), = sizes
    for key, value in batch.items():
        if key in flat or key in keys:
            continue
        if key.endswith("_present") and isinstance(value, torch.Tensor):
            value = value.repeat_interleave(k, dim=0)
        flat[key] = value
    return flat, b, k


def run_part(key: str, call: Callable[[], Any]) -> Any:
    """``call()``, with a shape/type failure turned into a ``ValueError`` naming config key ``key``."""
    try:
        return call()
    except (RuntimeError, ValueError, IndexError, TypeError) as err:
        raise ValueError(f"{key} does not fit the data or the part before it: {err}") from err


class MultimodalPreTrainedModel(PreTrainedModel):
    """Base of the model kinds: encoder slots built from ``config.encoders``, export, freezing.

    Subclasses build their parts after calling ``super().__init__(config)``, then call
    :meth:`finish_init`; they implement :meth:`components` (name -> module, for
    ``model.trainable``) and :meth:`check_batch` (run a real batch part by part).
    """

    config_class = MultimodalConfig
    base_model_prefix = "mmtrain"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules: list[str] = []
    #: Whether the kind reads its inputs through mmtrain encoder slots (a whole VLM has its own tower).
    requires_encoders = True

    def __init__(self, config: MultimodalConfig) -> None:
        super().__init__(config)
        if not config.encoders and self.requires_encoders:
            raise ValueError(f"{type(config).__name__} needs at least one encoder spec ('encoders').")
        self.prefixes = narrow_prefixes(runtime_prefixes(), config.allowed_target_prefixes)
        self.frozen: set[str] = set()
        self.encoders = nn.ModuleDict()
        self._accepts: dict[str, tuple[str, ...]] = {}
        for name, spec in config.encoders.items():
            if not isinstance(spec, Mapping) or "_target_" not in spec:
                raise ValueError(
                    f"model.encoders.{name} has no _target_ (it holds only {sorted(spec) if isinstance(spec, Mapping) else spec!r}): "
                    f"choose an encoder with model/encoders/{modality_of(name)}=<option>, or remove the slot's "
                    f"settings along with it (~model.encoders.{name})."
                )
            encoder = safe_instantiate(spec, self.prefixes, config_key=f"model.encoders.{name}")
            # An encoder may name the keys it reads (``input_names``); else its forward signature does.
            accepted = getattr(encoder, "input_names", None) or inspect.signature(encoder.forward).parameters
            self._accepts[name] = tuple(k for k in MODALITY_INPUTS[modality_of(name)] if k in accepted)
            self.encoders[name] = encoder

    def finish_init(self) -> None:
        """Call at the end of a subclass ``__init__``: HF post-init, then ``config.trainable``."""
        self.post_init()
        self.apply_trainable(self.config.trainable or {})

    def build_part(self, key: str, **injected: Any) -> nn.Module:
        """Instantiate ``config.<key>`` (allowlisted) with the builder's ``injected`` arguments."""
        return safe_instantiate(getattr(self.config, key), self.prefixes, config_key=f"model.{key}", **injected)

    @property
    def encoder_dims(self) -> dict[str, int]:
        """Slot name -> ``output_dim`` of its encoder."""
        return {name: int(encoder.output_dim) for name, encoder in self.encoders.items()}

    # -- export -----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        pretrained_model_name_or_path: str | Path,
        *model_args: Any,
        config: MultimodalConfig | None = None,
        **kwargs: Any,
    ) -> "MultimodalPreTrainedModel":
        """Load an exported folder: build the model on CPU from its config, then load the weights.

        Building for real (not on the meta device, as transformers 5 does by default) keeps the
        buffers that components compute in ``__init__``; every weight must then be present in the
        folder's safetensors, so a partial export fails loudly instead of loading random weights.
        Hub arguments that ``AutoModel`` passes along are ignored; no network is used. ``config.json``
        and the weights are checked against the folder's ``manifest.json`` first (:mod:`mmtrain.core.integrity`;
        ``verify=False`` skips that for files you trust).
        """
        folder = Path(pretrained_model_name_or_path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} is not an exported mmtrain model (no config.json); pass the export/ folder "
                "of a run, or run `mmtrain export <checkpoint>` first."
            )
        if kwargs.pop("verify", True):  # size + sha256 (and signature) from the folder's manifest.json
            verify_folder(folder, ["config.json", WEIGHTS_NAME])
        if config is None:
            config = cls.config_class.from_pretrained(folder)
        model = cls(config)
        weights = folder / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{weights} is missing; the export is incomplete.")
        missing, unexpected = load_model(model, weights, strict=False)
        if missing or unexpected:
            raise RuntimeError(
                f"weights in {weights} do not match the model its config.json describes: "
                f"missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}."
            )
        dtype = kwargs.get("dtype") or kwargs.get("torch_dtype")
        if isinstance(dtype, torch.dtype):
            model = model.to(dtype)
        return model.eval()

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:  # type: ignore[override]
        """Write ``config.json`` and ``model.safetensors`` with the module's own parameter names.

        transformers 5 renames some towers' weights to their legacy checkpoint layout on save and
        back on load; our loader builds the model itself, so the names are stored exactly as the
        modules have them (shared tensors are stored once, as ``safetensors.torch.save_model`` does).
        Both files are listed with their sha256 in the folder's ``manifest.json``.
        """
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(folder)
        save_model(self, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        update_manifest(folder, ["config.json", WEIGHTS_NAME])

    def _init_weights(self, module: nn.Module) -> None:
        """Components initialise themselves when built; nothing to redo here."""

    # -- components ---------------------------------------------------------------------------

    def components(self) -> dict[str, nn.Module]:
        """Component name -> module: every encoder slot plus the kind's own parts."""
        return dict(self.encoders.items())

    #: Methods that run the model outside ``forward`` (generation, scoring): under FSDP2 each is registered
    #: as a forward of the whole model, so its parameters are gathered for the call (``mmtrain.engine.sharding``).
    sharded_entry_points: tuple[str, ...] = ()

    def shard_units(self) -> dict[str, nn.Module]:
        """Components that become their own FSDP2 unit (gathered only while they run); the parameters of any other
        part stay in the model's root unit, gathered for the whole forward. Kinds that read a part's weights
        outside its ``forward`` (an LM's embedding table and head) leave that part out."""
        return self.components()

    def apply_trainable(self, trainable: Mapping[str, bool]) -> None:
        """Freeze or unfreeze components by name (encoder slot, ``fusion``, ``head``...).

        A frozen component also stays in eval mode (see :meth:`train`), so its dropout is off and
        its normalisation statistics do not move: frozen means bit-identical.
        """
        parts = self.components()
        unknown = sorted(set(trainable) - set(parts))
        if unknown:
            raise ValueError(f"model.trainable names unknown components {unknown}; known: {sorted(parts)}")
        for name, flag in trainable.items():
            parts[name].requires_grad_(bool(flag))
            if flag:
                self.frozen.discard(name)
            else:
                self.frozen.add(name)
        self.train(self.training)

    def train(self, mode: bool = True) -> "MultimodalPreTrainedModel":
        """``nn.Module.train``, except that frozen components (``model.trainable``) stay in eval mode."""
        super().train(mode)
        frozen = getattr(self, "frozen", ())  # unset while transformers' own __init__ runs
        parts = self.components() if frozen else {}
        for name in frozen:
            parts[name].eval()
        return self

    def expected_inputs(self) -> set[str]:
        """Batch keys the encoders take (e.g. ``input_features`` for log-mel audio)."""
        return {key for keys in self._accepts.values() for key in keys}

    def slot_inputs(self, name: str, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The entries of ``batch`` encoder ``name`` takes (those present)."""
        return {k: batch[k] for k in self._accepts[name] if batch.get(k) is not None}

    def encode_one(self, name: str, **batch: Any) -> EncoderOutput:
        """Encoder ``name`` on its keys of ``batch``; samples without the modality are masked out.

        ``batch["cached_features"]`` (a :class:`~mmtrain.data.cached_features.CachedBatch`, when the data
        was served through the frozen-encoder feature cache) is the slot's stored outputs for the batch's
        rows: with the cache attached (:attr:`feature_cache`), rows that have one are read instead of
        encoded, and the others encoded and stored (:meth:`FeatureCache.encode`).
        """
        kwargs = self.slot_inputs(name, batch)
        cached = batch.get(CACHED_KEY)
        cache = getattr(self, "feature_cache", None) if cached is not None else None
        if cached is not None and cache is None and any(cached.served.get(modality_of(name), ())):
            raise ValueError(f"the batch's {modality_of(name)} media were served from a feature cache (not decoded), "
                             "but this model has none attached (models.feature_cache.setup_feature_cache).")
        if not kwargs and not (cache is not None and cache.served(name, cached)):  # served: media not even decoded
            raise ValueError(
                f"batch has no input for encoder '{name}' (expects one of {list(self._accepts[name])}); "
                f"got keys {sorted(k for k, v in batch.items() if v is not None)}."
            )
        present = batch.get(f"{name}_present", batch.get(f"{modality_of(name)}_present"))
        if cache is not None:
            output = cache.encode(name, lambda: self.encoders[name](**kwargs), kwargs, cached)
            return output.with_presence(present)
        return self.encoders[name](**kwargs).with_presence(present)

    def encode(self, **batch: Any) -> dict[str, EncoderOutput]:
        """Every encoder's output, by slot name."""
        return {name: self.encode_one(name, **batch) for name in self.encoders}

    def encode_checked(self, batch: Mapping[str, Any]) -> dict[str, EncoderOutput]:
        """:meth:`encode`, each slot run through :func:`run_part` so a misfit names its config key."""
        return {
            name: run_part(f"model.encoders.{name}", lambda n=name: self.encode_one(n, **batch))
            for name in self.encoders
        }

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        """Run a real (model-input) batch through each part in eval mode, without gradients.

        Raises:
            ValueError: naming the config key of the first part that does not fit.
        """
        raise NotImplementedError

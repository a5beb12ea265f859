"""LoRA on the causal LM of an :class:`~mmtrain.models.llm.LLMModel`, through ``peft``; merge; exports.

Set ``model.lora`` (default ``null``: the LM trains as ``model.trainable`` says)::

    lora: {r: 8, alpha: 16, dropout: 0.05, target_modules: [c_attn, c_proj], quantize: null}

**How it is applied.** :func:`apply_lora` calls ``peft.inject_adapter_in_model`` (peft's public
API for models it does not wrap, :mod:`peft.functional`) on ``CausalLMDecoder.lm``, in place.
``get_peft_model`` would wrap the LM in a ``PeftModelForCausalLM`` and prefix every LM weight with
``base_model.model.``; injection keeps ``decoder.lm`` the same Hugging Face ``*ForCausalLM`` (its
forward, ``get_input_embeddings`` and ``generate`` unchanged) and every state-dict name stable
except the targeted layers, which gain ``.base_layer`` and ``lora_A/B.default``. The LM's base
weights are frozen; the adapters train, as do the encoders, projector and head (outside the LM).

**New token rows.** The prompt's marker/placeholder/class tokens are rows the embedding resize
left random. A frozen embedding keeps them random; a trainable one moves the pretrained rows too
and puts ``vocab x E`` weights (x2 untied) into the adapter and the optimizer (tiny GPT-2: +977k
parameters against 2.5k). So peft's ``trainable_token_indices`` trains just those rows: a
``[T, E]`` tensor that *replaces* them (the base's random rows never matter); a tied LM head follows
it, an untied one gets the same rows trained. Rows: :func:`new_token_ids` (ids >= the LM's own
vocab size, plus the class token). Cost: each forward builds the patched ``vocab x E`` matrix (once
more for the head), ~10% of a CPU step at a 50k x 256 vocabulary.

**Export layout** (:func:`write_lora_exports`, called by ``training.export.write_export``, so
training's export and ``mmtrain export`` both write it; write_export adds the processor and
``training_config.yaml`` to both folders)::

    export/                      merged: config.json (lora: null) + model.safetensors, adapters
                                 folded into the LM weights -> AutoModel.from_pretrained(export)
    export/adapter/              adapter-only (when the LM came from decoder.pretrained_path):
        adapter_config.json      peft's LoraConfig; base_model_name_or_path = the base LM folder
        adapter_model.safetensors  peft's format: lora_A/B + the trained token rows
        config.json              the LLMConfig (lora set)
        model.safetensors        every weight outside the LM (encoders, projector, head)
    -> LLMModel.from_adapter("export/adapter", base=None | <base LM folder>), or
       AutoModel.from_pretrained("export/adapter") (base LM read from the recorded folder); the LM
       alone also loads with peft: PeftModel.from_pretrained(<base LM resized to lm_vocab_size>, ...)

**QLoRA** (``quantize: 4bit | 8bit``) loads the pretrained LM through transformers'
``BitsAndBytesConfig`` (4-bit NF4 with double quantization, or LLM.int8) on the GPU, or on the CPU
where no CUDA device exists (bitsandbytes >= 0.45 runs both there; compute in float32): the LM's
linear layers become ``Linear4bit`` / ``Linear8bitLt``, only the adapters (and the new token rows)
train. It needs the ``bitsandbytes`` package (``pip install 'mmtrain[qlora]'``); :func:`lora_settings`
names it at build time when missing. The merged export loads the adapter export again on a
full-precision base (``from_adapter(..., full_precision=True)``) and merges there. The quantized
loading itself is :mod:`mmtrain.components.lm.qlora`.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.functional import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from mmtrain.components.encoders.hf_tower import build_hf_config
from mmtrain.core.integrity import update_manifest, verify_folder
from mmtrain.components.lm.qlora import check_quantization
from mmtrain.components.paths import resolve_pretrained_path

log = logging.getLogger(__name__)

#: ``model.lora`` keys and their defaults (``target_modules`` has none: it depends on the LM).
LORA_DEFAULTS: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": None, "quantize": None}
QUANTIZE = ("4bit", "8bit")
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"  # the names peft's PeftModel.save_pretrained writes
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PARTS_WEIGHTS = "model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel's key prefix in adapter_model.safetensors
ADAPTER = "default"


def lora_module(model: nn.Module) -> nn.Module:
    """The module a model's LoRA is injected into: ``model.<lora_module_path>`` (an LLM model's
    ``decoder.lm``, a whole VLM's ``vlm``)."""
    return model.get_submodule(type(model).lora_module_path)


def _lm_prefix(model: nn.Module) -> str:
    return f"{type(model).lora_module_path}."


def lora_settings(spec: Mapping[str, Any] | None, trainable: Mapping[str, bool] | None = None, *,
                  adapted: str = "decoder", extra: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """``model.lora`` checked and completed with defaults, or ``None`` (no LoRA).

    ``adapted``: the component whose base weights LoRA freezes (``model.trainable.<adapted>`` is refused
    alongside); ``extra``: the kind's own keys and their defaults.

    Raises:
        ValueError: an unknown key, a bad value, ``model.trainable.<adapted>`` set alongside, or
            ``quantize`` without the bitsandbytes package.
    """
    if spec is None:
        return None
    defaults = {**LORA_DEFAULTS, **dict(extra or {})}
    unknown = sorted(set(spec) - set(defaults))
    if unknown:
        raise ValueError(f"model.lora has unknown key(s) {unknown}; its keys: {list(defaults)}.")
    settings = {**defaults, **dict(spec)}
    if not isinstance(settings["r"], int) or settings["r"] < 1:
        raise ValueError(f"model.lora.r must be a positive integer (the adapter rank), got {settings['r']!r}.")
    if not 0.0 <= float(settings["dropout"]) < 1.0:
        raise ValueError(f"model.lora.dropout must be in [0, 1), got {settings['dropout']!r}.")
    targets = settings["target_modules"]
    if targets is not None and not isinstance(targets, str):
        settings["target_modules"] = [str(t) for t in targets]
    if settings["quantize"] is not None and settings["quantize"] not in QUANTIZE:
        raise ValueError(f"model.lora.quantize must be null, 4bit or 8bit, got {settings['quantize']!r}.")
    if adapted in (trainable or {}):
        raise ValueError(
            f"model.trainable.{adapted} cannot be combined with model.lora: with LoRA the LM's base weights "
            f"are frozen and its adapters train; remove model.trainable.{adapted} (or set model.lora: null)."
        )
    if settings["quantize"]:
        check_quantization(settings["quantize"])
    return settings


def linear_module_names(lm: nn.Module) -> list[str]:
    """Sorted leaf names of the LM's linear layers (``nn.Linear``, GPT-2's ``Conv1D``): LoRA targets."""
    return sorted({name.rpartition(".")[2] for name, m in lm.named_modules() if isinstance(m, (nn.Linear, Conv1D))})


def _targets(lm: nn.Module, target_modules: str | Sequence[str]) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` pairs peft will adapt: a name equal to or ending in ``.<entry>`` (a list), or
    fully matching the regex (a string); every list entry must match (peft only checks one does)."""
    modules = [(n, m) for n, m in lm.named_modules() if n]
    if target_modules == "all-linear":  # peft's shorthand: every linear layer but the output head
        return [(n, m) for n, m in modules if isinstance(m, (nn.Linear, Conv1D))]
    if isinstance(target_modules, str):
        hits = [(n, m) for n, m in modules if re.fullmatch(target_modules, n)]
        unmatched = [] if hits else [target_modules]
    else:
        hits = [(n, m) for n, m in modules if any(n == t or n.endswith("." + t) for t in target_modules)]
        unmatched = [t for t in target_modules if not any(n == t or n.endswith("." + t) for n, _ in hits)]
    if unmatched:
        raise ValueError(
            f"model.lora.target_modules {unmatched} match no module of the LM ({type(lm).__name__}); "
            f"its linear modules: {linear_module_names(lm)}."
        )
    return hits


def new_token_ids(decoder_spec: Mapping[str, Any], vocab_size: int | None, class_token_id: int | None) -> list[int]:
    """Embedding rows to train with LoRA: ids >= the LM's own vocab size (the rows
    ``resize_token_embeddings`` added for the prompt's tokens) plus the class token's row. A
    random-init LM (no ``pretrained_path``) has no pretrained rows to keep: all its rows train."""
    ids = {int(class_token_id)} if class_token_id is not None else set()
    if vocab_size is not None and not decoder_spec.get("pretrained_path"):
        return list(range(int(vocab_size)))
    if vocab_size is not None and decoder_spec.get("model_type"):
        folder = resolve_pretrained_path(decoder_spec.get("pretrained_path"))
        own = int(build_hf_config(str(decoder_spec["model_type"]), decoder_spec.get("config"), folder).vocab_size)
        ids |= set(range(own, int(vocab_size)))
    return sorted(ids)


def apply_lora(lm: nn.Module, settings: Mapping[str, Any], token_ids: Sequence[int], *,
               targets: str | Sequence[str] | None = None, modules_to_save: Sequence[str] | None = None) -> LoraConfig:
    """Inject LoRA layers into ``lm`` in place and freeze its base weights.

    Args:
        lm: the module adapted (an LLM model's ``decoder.lm``, a whole VLM).
        settings: from :func:`lora_settings`.
        token_ids: embedding rows that train too (:func:`new_token_ids`); ``[]`` for none.
        targets: peft's ``target_modules`` (default: ``settings["target_modules"]``; a VLM narrows them
            to its language model with a regex).
        modules_to_save: modules trained in full beside the adapters, saved in the adapter (peft's
            ``modules_to_save``: a VLM's projector).

    Returns:
        The ``LoraConfig`` used (also at ``lm.peft_config["default"]``).
    """
    targets = targets or settings["target_modules"]
    if not targets:
        raise ValueError(f"model.lora.target_modules is not set; the LM's linear modules: {linear_module_names(lm)}.")
    hits = _targets(lm, targets)
    config = LoraConfig(
        r=int(settings["r"]), lora_alpha=float(settings["alpha"]), lora_dropout=float(settings["dropout"]),
        target_modules=targets, fan_in_fan_out=all(isinstance(m, Conv1D) for _, m in hits),
        trainable_token_indices=_token_rows(lm, token_ids), modules_to_save=list(modules_to_save or []) or None,
    )
    inject_adapter_in_model(config, lm, adapter_name=ADAPTER)
    return config


def _token_rows(lm: nn.Module, token_ids: Sequence[int]) -> list[int] | dict[str, list[int]] | None:
    """peft's ``trainable_token_indices``: the rows in the input embeddings (a tied head follows
    them); an untied head gets its own copy of the rows, else its new rows (random at each resize)
    would differ between the trained model and the adapter loaded on a fresh base."""
    ids = [int(i) for i in token_ids]
    inputs, outputs = lm.get_input_embeddings(), lm.get_output_embeddings()
    if not ids or outputs is None or outputs.weight is inputs.weight:
        return ids or None
    names = {id(module): name for name, module in lm.named_modules()}
    return {names[id(inputs)]: ids, names[id(outputs)]: ids}


def merge_lora(lm: nn.Module) -> nn.Module:
    """Fold every peft layer of ``lm`` into its base layer, in place; returns ``lm``, now a plain LM.

    As ``LoraModel.merge_and_unload`` (which needs the tuner object ``inject_adapter_in_model``
    discards): LoRA layers ``merge()`` and give way to their base layer; the trainable-token
    wrappers write their rows into the embedding (and a tied head) and unwrap.
    """
    def wraps(module: nn.Module) -> bool:
        return isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper))

    outer = [name for name, m in lm.named_modules() if wraps(m)]
    outer = [n for n in outer if not any(n.startswith(o + ".") for o in outer)]
    for name in outer:
        parent_name, _, child = name.rpartition(".")
        parent, module = lm.get_submodule(parent_name), lm.get_submodule(name)
        if isinstance(module, AuxiliaryTrainingWrapper):
            plain = module.unload_and_optionally_merge_module(merge=True, safe_merge=True, adapter_names=None)
        else:
            module.merge(safe_merge=True)
            plain = module.get_base_layer()
        setattr(parent, child, plain)
    if hasattr(lm, "peft_config"):
        del lm.peft_config
    return lm


def merged_copy(model: nn.Module) -> nn.Module:
    """A deep copy of an LLM model with its LoRA merged and ``config.lora = None`` (the model is
    untouched; the copy briefly doubles memory). It saves as a plain ``mmtrain_llm`` export."""
    if (model.config.lora or {}).get("quantize"):
        raise ValueError(
            "a QLoRA model merges on a full-precision base: save its adapter export, then "
            "LLMModel.from_adapter(<adapter folder>, full_precision=True).merged() (write_export does this)."
        )
    merged = copy.deepcopy(model)
    merge_lora(lora_module(merged))
    merged.config.lora = None
    return merged


def base_lm_reference(model: nn.Module) -> str | None:
    """Where the LM's pretrained weights come from (``model.decoder.pretrained_path``), as an adapter export
    records it: a Hub id as written (``org/name[@revision]``: any machine resolves it through its own cache,
    as peft's ``base_model_name_or_path`` expects), else the absolute folder; ``None`` for a random-init LM."""
    from mmtrain.components.hub import parse_hub_id

    key = type(model).base_spec_key
    path = (getattr(model.config, key) or {}).get("pretrained_path")
    folder = resolve_pretrained_path(path, what=f"model.{key}.pretrained_path")
    if folder is None:
        return None
    if not Path(str(path)).expanduser().is_dir() and parse_hub_id(str(path)) is not None:
        return str(path)
    return str(folder.resolve())


def _adapter_state(lm: nn.Module) -> dict[str, torch.Tensor]:
    """The LM's adapter weights as peft names them in a file (adapter name dropped, no prefix)."""
    return get_peft_model_state_dict(lm, adapter_name=ADAPTER, save_embedding_layers=False)


def save_adapter(model: nn.Module, folder: Path, *, base: str | None) -> Path:
    """Write the adapter-only export of a LoRA LLM model into ``folder`` (layout: module docstring).

    Args:
        model: an ``LLMModel`` with LoRA applied.
        folder: created if needed.
        base: the base LM (folder or Hub id) recorded as ``base_model_name_or_path`` (``None``: not recorded).
    """
    folder.mkdir(parents=True, exist_ok=True)
    lm = lora_module(model)
    config = copy.deepcopy(lm.peft_config[ADAPTER])
    config.base_model_name_or_path, config.inference_mode = base, True
    adapter = {PEFT_PREFIX + k: v.detach().contiguous().clone() for k, v in _adapter_state(lm).items()}
    save_file(adapter, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config.save_pretrained(str(folder))
    prefix = _lm_prefix(model)
    parts = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items() if not k.startswith(prefix)}
    save_file(parts, str(folder / PARTS_WEIGHTS), metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    update_manifest(folder, [ADAPTER_WEIGHTS, ADAPTER_CONFIG, PARTS_WEIGHTS, "config.json"])
    return folder


def is_adapter_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an adapter-only export (it holds ``adapter_config.json``)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_model_config(config_class: type, folder: str | Path, base: str | Path | None, full_precision: bool,
                         *, key: str = "decoder") -> Any:
    """The model config of an adapter-only export, its ``key`` spec (the LM, or a whole VLM) pointed at the base.

    Args:
        config_class: ``LLMConfig`` / ``VLMConfig``.
        folder: the adapter export.
        base: the base LM: its folder (``save_pretrained``) or Hub id; default: the one recorded at export.
        full_precision: drop ``quantize`` (load a QLoRA adapter on a full-precision base, e.g. on CPU).
    """
    folder = Path(folder)
    if not is_adapter_export(folder):
        raise FileNotFoundError(f"{folder} is not an adapter-only export (no {ADAPTER_CONFIG}); see mmtrain.components.lm.lora.")
    verify_folder(folder, [ADAPTER_CONFIG, "config.json"])  # manifest.json: size + sha256 (+ signature)
    recorded = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    base = base or recorded
    if not base:
        raise ValueError(
            f"{folder} records no base LM (the LM was randomly initialised, so its weights are only in the merged "
            "export); pass base=<folder of the base LM>, or load the merged export instead."
        )
    try:
        resolved = resolve_pretrained_path(str(base), what="base LM")
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"the base LM folder of the adapter export {folder} does not exist ({err}); pass "
            "base=<folder the base LM was saved to (save_pretrained), or its Hub id>."
        ) from err
    config = config_class.from_pretrained(folder)
    from mmtrain.components.hub import parse_hub_id

    by_id = not Path(str(base)).expanduser().is_dir() and parse_hub_id(str(base)) is not None
    setattr(config, key, {**getattr(config, key), "pretrained_path": str(base) if by_id else str(resolved)})
    if full_precision:
        config.lora = {**config.lora, "quantize": None}
    return config


def load_adapter_weights(model: nn.Module, folder: str | Path) -> None:
    """Load an adapter-only export's weights into ``model`` (built from its config on the base LM).

    Raises:
        RuntimeError: the files do not hold exactly what the model expects.
    """
    folder = Path(folder)
    verify_folder(folder, [ADAPTER_WEIGHTS, PARTS_WEIGHTS])
    parts = load_file(str(folder / PARTS_WEIGHTS))
    missing, unexpected = model.load_state_dict(parts, strict=False)
    missing = [k for k in missing if not k.startswith(_lm_prefix(model))]
    adapter = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(folder / ADAPTER_WEIGHTS)).items()}
    expected = set(_adapter_state(lora_module(model)))
    if missing or unexpected or set(adapter) != expected:
        raise RuntimeError(
            f"the adapter export {folder} does not match the model its config.json describes: missing "
            f"{sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}, adapter keys differing "
            f"{sorted(set(adapter) ^ expected)[:10]}."
        )
    set_peft_model_state_dict(lora_module(model), adapter, adapter_name=ADAPTER)


def write_lora_exports(model: nn.Module, folder: Path) -> Path | None:
    """The merged export into ``folder`` and the adapter-only one into ``folder/adapter``.

    The adapter export is written when the LM came from a pretrained folder (it is the base the
    adapter needs); a randomly initialised LM exists only in the merged export.

    Returns:
        The adapter folder, or ``None`` when none was written.
    """
    base = base_lm_reference(model)
    adapter = save_adapter(model, folder / ADAPTER_DIR, base=base) if base else None
    if adapter is None:
        log.warning("model.lora: the LM was randomly initialised (no model.decoder.pretrained_path), so only the "
                    "merged export is written; an adapter export needs a base LM folder.")
    if (model.config.lora or {}).get("quantize"):
        merged = type(model).from_adapter(adapter, full_precision=True).merged()
    else:
        merged = merged_copy(model)
    merged.save_pretrained(folder)
    return adapter

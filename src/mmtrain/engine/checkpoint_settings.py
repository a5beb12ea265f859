"""Preprocessing that follows the checkpoints: a tower loaded from a pretrained folder or Hub id sees its
inputs the way it was trained to.

For each encoder slot with a ``pretrained_path``, the folder's ``preprocessor_config.json`` (else its
``config.json``) says what the tower expects, and ``data.processor`` takes it:

==========  ======================================================================================
slot        settings taken
==========  ======================================================================================
image       ``image_size`` (crop size, else size), ``image_mean``, ``image_std``
audio       ``num_mel_bins`` and ``audio_frames`` (log-mel towers: Whisper); a sampling rate other
            than 16 kHz is refused (mmtrain resamples every audio input to 16 kHz)
text        ``tokenizer`` when the folder holds one; with an LM decoder (whose tokenizer the prompt
            needs) ``text_tokenizer``, the text slot's own (a two-tokenizer processor)
==========  ======================================================================================

A value the run's command line set itself (``data.processor.image_size=112``, listed in
``overridden_keys``) is the user's: when it differs from the checkpoint's, the run stops before anything
is built, naming both. Every value taken is logged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from mmtrain.components.paths import resolve_pretrained_path
from mmtrain.config.compose import ConfigError
from mmtrain.models.base import modality_of

log = logging.getLogger(__name__)

SAMPLING_RATE = 16000
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "tokenizer.model")


def _json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        content = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{file}: not readable JSON ({err}); the checkpoint folder is damaged.") from err
    return content if isinstance(content, dict) else {}


def _side(value: Any) -> int | None:
    """A square side from a processor size entry: ``224``, ``{"height": 224, "width": 224}`` or
    ``{"shortest_edge": 224}``; ``None`` for a non-square or unknown one."""
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        if "height" in value and value.get("height") == value.get("width"):
            return int(value["height"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
    return None


def image_settings(folder: Path) -> dict[str, Any]:
    """``image_size`` / ``image_mean`` / ``image_std`` a vision checkpoint folder declares (a transformers or
    an open_clip one)."""
    from mmtrain.components.encoders.open_clip_image import CONFIG_FILE, open_clip_preprocess

    if (folder / CONFIG_FILE).is_file():
        return open_clip_preprocess(folder)
    pre, config = _json(folder / "preprocessor_config.json"), _json(folder / "config.json")
    config = config.get("vision_config") or config
    out: dict[str, Any] = {}
    side = (_side(pre.get("crop_size")) if pre.get("do_center_crop") else None) or _side(pre.get("size"))
    side = side or (int(config["image_size"]) if isinstance(config.get("image_size"), int) else None)
    if side:
        out["image_size"] = side
    for key in ("image_mean", "image_std"):
        values = pre.get(key)
        if isinstance(values, list) and len(values) == 3:
            out[key] = [float(v) for v in values]
    return out


def audio_settings(folder: Path, where: str) -> dict[str, Any]:
    """``num_mel_bins`` / ``audio_frames`` of a log-mel audio checkpoint (nothing for waveform towers)."""
    pre, config = _json(folder / "preprocessor_config.json"), _json(folder / "config.json")
    rate = pre.get("sampling_rate")
    if rate is not None and int(rate) != SAMPLING_RATE:
        raise ConfigError(f"{where}: the checkpoint's audio is sampled at {rate} Hz; mmtrain feeds every audio "
                          f"tower {SAMPLING_RATE} Hz audio. Pick a {SAMPLING_RATE} Hz checkpoint.")
    if int(pre.get("feature_size") or 1) > 1:  # a log-mel extractor (Whisper's)
        frames = pre.get("nb_max_frames") or int(pre.get("chunk_length", 30)) * SAMPLING_RATE // int(
            pre.get("hop_length", 160))
        return {"num_mel_bins": int(pre["feature_size"]), "audio_frames": int(frames)}
    if config.get("model_type") == "whisper":
        return {"num_mel_bins": int(config["num_mel_bins"]), "audio_frames": 2 * int(config["max_source_positions"])}
    return {}


def checkpoint_settings(slot: str, value: str, folder: Path, has_decoder: bool) -> dict[str, Any]:
    """The ``data.processor`` settings encoder ``slot``'s checkpoint (``value`` as written, at ``folder``) asks for."""
    where = f"model.encoders.{slot}.pretrained_path {value!r}"
    modality = modality_of(slot)  # a slot named after its modality, or <modality>_<name>
    if modality == "image":
        return image_settings(folder)
    if modality == "audio":
        return audio_settings(folder, where)
    if modality == "text" and any((folder / name).is_file() for name in TOKENIZER_FILES):
        return {"text_tokenizer" if has_decoder else "tokenizer": value}
    return {}


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def follow_checkpoints(cfg: DictConfig) -> dict[str, Any]:
    """Set ``cfg.data.processor`` from the pretrained encoder checkpoints (see the module docstring);
    returns what changed, ``{key: (before, after)}``.

    Raises:
        ConfigError: a setting the command line set differs from the checkpoint's (both named), or a
            checkpoint mmtrain cannot feed (an audio rate other than 16 kHz).
    """
    processor = cfg.data.get("processor")
    encoders = cfg.model.get("encoders") or {}
    if processor is None or not encoders:
        return {}
    explicit = {str(key) for key in cfg.get("overridden_keys") or []}
    has_decoder = cfg.model.get("decoder") is not None
    changed: dict[str, Any] = {}
    set_by: dict[str, str] = {}  # processor key -> the slot whose checkpoint set it
    for slot, spec in encoders.items():
        value = spec.get("pretrained_path") if isinstance(spec, DictConfig) else None
        if not value:
            continue
        folder = resolve_pretrained_path(str(value), what=f"model.encoders.{slot}.pretrained_path")
        for key, wanted in checkpoint_settings(str(slot), str(value), folder, has_decoder).items():
            current = _plain(processor.get(key))
            if key in set_by and current != wanted:  # one processor feeds both towers
                raise ConfigError(
                    f"model.encoders.{set_by[key]} and model.encoders.{slot} come from checkpoints that want "
                    f"different data.processor.{key} ({current} and {wanted}); use towers that agree.")
            set_by[key] = str(slot)
            if current == wanted:
                continue
            if f"data.processor.{key}" in explicit:
                raise ConfigError(
                    f"data.processor.{key}={current} was set on the command line, but model.encoders.{slot}."
                    f"pretrained_path ({value}) was trained with {key}={wanted}; the tower would see other inputs "
                    f"than it learnt from. Drop the override to follow the checkpoint.")
            with open_dict(processor):
                processor[key] = wanted
            changed[f"data.processor.{key}"] = (current, wanted)
            log.info("data.processor.%s: %s (from model.encoders.%s.pretrained_path %s; was %s)",
                     key, wanted, slot, value, current)
    return changed

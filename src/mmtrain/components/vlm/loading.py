"""Loading a whole vision-language model and its own processor (folder or Hub id, :mod:`mmtrain.components.paths`).

:func:`load_vlm_processor` is ``AutoProcessor.from_pretrained``: the checkpoint's image processor
(resize, crop, mean/std, patching), tokenizer and chat template. Processors that also hold a *video*
processor (Qwen2-VL, Qwen2.5-VL...) need torchvision for that part alone; where it is not installed,
transformers cannot build them at all, so the same processor class is assembled from the folder's image
processor, tokenizer and chat template without a video processor (images work exactly as before; a video
input is refused). :func:`build_vlm` builds ``AutoModelForImageTextToText`` from a folder (weights read,
4-bit / 8-bit through bitsandbytes for QLoRA) or from a full config (random init, as an export rebuilds it).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmtrain.components.encoders.hf_tower import _config_from_dict, build_hf_config, build_hf_model

log = logging.getLogger(__name__)

PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
#: Modules a QLoRA load keeps in full precision: the vision towers, projectors and the LM head (patterns as
#: transformers matches them: a regex from the start of a module's full name, or a suffix).
NOT_QUANTIZED = [r".*\.vision_tower", r".*\.multi_modal_projector", r".*\.visual", r".*\.vision_model", "lm_head"]


def load_vlm_processor(folder: Path, *, what: str) -> Any:
    """The Hugging Face processor saved in ``folder`` (images + text + chat template).

    Raises:
        FileNotFoundError: the folder holds no model or no processor (``what`` names the config key).
        ValueError: the processor is not one of images and text.
    """
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{what}: {folder} has no config.json: it is not a model saved with save_pretrained "
                                "(or a Hub snapshot of one); point it at the folder that holds the model and its processor.")
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        raise FileNotFoundError(
            f"{what}: {folder} holds no processor ({' / '.join(PROCESSOR_FILES)}): a vision-language model "
            "trains with its own image processor, tokenizer and chat template. Save them beside the weights "
            "(processor.save_pretrained(folder)), or use the model's Hub snapshot, which has them.")
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except ImportError as err:
        if "torchvision" not in str(err).lower():
            raise
        processor = _images_only(folder, err)
    missing = [part for part in ("tokenizer", "image_processor") if getattr(processor, part, None) is None]
    if missing:
        raise ValueError(f"{what}: the processor in {folder} ({type(processor).__name__}) has no {' / '.join(missing)}; "
                         "a vision-language model needs both an image processor and a tokenizer.")
    return processor


def _images_only(folder: Path, err: ImportError) -> Any:
    """The folder's processor class built from its image processor, tokenizer and chat template, without
    the video processor that needs torchvision (re-raises ``err`` for a processor without one)."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    config = folder / "processor_config.json"
    name = json.loads(config.read_text()).get("processor_class") if config.is_file() else None
    cls = getattr(transformers, str(name), None) if name else None
    if cls is None or "video_processor" not in inspect.signature(cls.__init__).parameters:
        raise err
    images = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else getattr(tokenizer, "chat_template", None)
    log.info("%s: its video processor needs torchvision (not installed); loaded for images only", name)
    return _images_only_class(cls)(image_processor=images, tokenizer=tokenizer, video_processor=None,
                                   chat_template=template)


def _images_only_class(cls: type) -> type:
    """A subclass of processor class ``cls`` that takes ``video_processor=None`` and saves its parts."""

    def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
        if argument_name == "video_processor" and argument is None:
            return None
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    def save_pretrained(self: Any, save_directory: str | Path, **kwargs: Any) -> list[str]:
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(folder))
        self.image_processor.save_pretrained(str(folder))
        if self.chat_template:
            (folder / "chat_template.jinja").write_text(self.chat_template)
        (folder / "processor_config.json").write_text(json.dumps({"processor_class": cls.__name__}, indent=2) + "\n")
        return [str(folder)]

    return type(cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class,
                                       "save_pretrained": save_pretrained, "__module__": __name__})


class _AutoVLM:
    """``build_hf_model`` calls ``cls(config)`` / ``cls.from_pretrained(...)``; route both to the Auto class."""

    def __new__(cls, config: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_config(config, **kwargs)

    @staticmethod
    def from_pretrained(*args: Any, **kwargs: Any) -> Any:
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(*args, **kwargs)


def vlm_model_type(spec: Mapping[str, Any], folder: Path | None) -> str:
    """The Hugging Face ``model_type`` of a VLM spec: its embedded config's, else the folder's."""
    embedded = (spec.get("config") or {}).get("model_type")
    if embedded:
        return str(embedded)
    if folder is None:
        raise ValueError("model.vlm needs pretrained_path (a folder or Hub id of a vision-language model) "
                         "or a full config with its model_type.")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.vlm.pretrained_path: {folder} has no config.json; point it at the folder "
                                "that holds the model (save_pretrained) or a Hub id.")
    return str(json.loads((folder / "config.json").read_text()).get("model_type"))


def build_vlm(spec: Mapping[str, Any], folder: Path | None, *, quantize: str | None = None) -> nn.Module:
    """``AutoModelForImageTextToText`` of ``spec`` (``pretrained_path`` resolved to ``folder``; ``config``:
    overrides, or the full config an export carries); ``quantize`` (4bit | 8bit) loads the LM's linear
    layers with bitsandbytes (vision tower, projector and LM head stay full precision), ready for QLoRA."""
    model_type = vlm_model_type(spec, folder)
    given = dict(spec.get("config") or {})
    if given.get("model_type"):  # the full config (the folder's, overrides merged in, as a built spec carries it)
        hf_config = _config_from_dict(model_type, given)
        hf_config.dtype = torch.get_default_dtype()
    else:
        hf_config = build_hf_config(model_type, given, folder)
    if not quantize:
        return build_hf_model(_AutoVLM, hf_config, folder)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    from mmtrain.components.lm.qlora import check_quantization, keep_training_layout

    check_quantization(quantize)
    if folder is None:
        raise ValueError("model.lora.quantize quantizes a pretrained model: set model.vlm.pretrained_path.")
    cuda = torch.cuda.is_available()
    compute = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    bnb = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, llm_int8_skip_modules=NOT_QUANTIZED)
           if quantize == "4bit" else BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=NOT_QUANTIZED))
    model = build_hf_model(_AutoVLM, hf_config, folder, quantization_config=bnb,
                           device_map={"": torch.cuda.current_device() if cuda else "cpu"})
    keep_training_layout(model)
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

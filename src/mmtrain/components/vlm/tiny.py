"""Tiny random-init vision-language models of real families, written by transformers itself.

``builtin:tiny-llava`` and ``builtin:tiny-qwen2-vl`` (wherever a ``pretrained_path`` is accepted) name a
folder built on first use under ``<mmtrain cache>/models/<name>``: a ``LlavaForConditionalGeneration``
(CLIP vision tower, MLP projector, Llama LM; GPT-2's real BPE with ``<image>`` added, LLaVA-1.5's chat
template) or a ``Qwen2VLForConditionalGeneration`` (Qwen2-VL vision tower and merger, Qwen2 LM with
M-RoPE; Qwen2.5's real tokenizer, Qwen2-VL's chat template), each a few layers wide enough to train in
seconds on a CPU. Model, tokenizer, image processor and chat template are saved with their own
``save_pretrained``, so the folder has the layout of ``llava-hf/llava-1.5-7b-hf`` or
``Qwen/Qwen2-VL-2B-Instruct``: what works on it works on those (``experiment=vlm_*`` on the demo data;
point ``model.vlm.pretrained_path`` at the real id on a GPU machine).

The weights are random (fixed seed, drawn under a forked RNG: the caller's random state is untouched);
the families' code paths (image token expansion, vision feature selection, M-RoPE positions, chat
templates, generation) are the real ones. A stamp file rebuilds the folder when this builder changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mmtrain.core.fileio import build_stamped_folder

STAMP_FILE = "mmtrain_tiny_vlm.json"
BUILDER_VERSION = 1
SEED = 0

#: LLaVA-1.5's chat template (llava-hf): images first, then text; "USER: ... ASSISTANT:".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
#: Qwen2-VL-Instruct's chat template (images only; its video branch needs no tokens here).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(name: str) -> Any:
    from mmtrain.components.lm.tokenizers import builtin_tokenizer

    return builtin_tokenizer(name)


TINY_LLAVA_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "image_size": 32, "patch_size": 8}
TINY_LLAVA_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "max_position_embeddings": 512}


def write_llava(folder: Path, *, vision: dict[str, Any] | None = None, text: dict[str, Any] | None = None,
                dtype: torch.dtype | None = None) -> None:
    """A random-init LLaVA-1.5-family model with its processor into ``folder`` (``vision``: CLIP vision config
    fields, ``text``: Llama config fields; the tiny sizes by default)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from transformers import LlavaProcessor

    tok = _tokenizer("gpt2")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"], "pad_token": "<pad>"})
    vision_config = CLIPVisionConfig(**(vision or TINY_LLAVA_VISION))
    text_config = LlamaConfig(**(text or TINY_LLAVA_TEXT), vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    config = LlavaConfig(vision_config=vision_config, text_config=text_config,
                         image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_layer=-2,
                         vision_feature_select_strategy="default", projector_hidden_act="gelu")
    model = LlavaForConditionalGeneration(config)
    (model.to(dtype) if dtype else model).save_pretrained(folder)
    # CLIP-style preprocessing at the tower's size: shortest edge, centre crop, CLIP mean/std
    size = int(vision_config.image_size)
    images = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=int(vision_config.patch_size),
                   vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                   num_additional_image_tokens=1).save_pretrained(folder)


def _write_qwen2_vl(folder: Path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = _tokenizer("qwen2.5")
    tok.eos_token = "<|im_end|>"  # an instruct model's turn ends there (Qwen2-VL-Instruct's eos)
    tok.chat_template = QWEN2_VL_CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    config = Qwen2VLConfig(
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": len(tok), "max_position_embeddings": 1024,
                     "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "tie_word_embeddings": True},
        vision_config={"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 4,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    # Qwen2-VL resizes to multiples of patch x merge (8 px) between min and max pixels: 32x32 -> 16 tokens
    images = Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2,
                                      size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64})
    # Qwen2VLProcessor also holds a video processor, which needs torchvision; without it transformers cannot
    # build the processor object, so its parts are saved as Qwen2VLProcessor.save_pretrained lays them out
    # (mmtrain.components.vlm.loading assembles them back, images only, where torchvision is missing).
    tok.save_pretrained(folder)
    images.save_pretrained(folder)
    (folder / "chat_template.jinja").write_text(QWEN2_VL_CHAT_TEMPLATE)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2VLProcessor"}, indent=2) + "\n")


#: builtin name -> writer of its folder.
TINY_VLMS: dict[str, Callable[[Path], None]] = {"tiny-llava": write_llava, "tiny-qwen2-vl": _write_qwen2_vl}


def _stamp(name: str) -> dict[str, Any]:
    import transformers

    return {"name": name, "builder_version": BUILDER_VERSION, "transformers": transformers.__version__}


def tiny_vlm_folder(name: str, cache_dir: str | Path | None = None) -> Path:
    """The folder of tiny VLM ``name`` (``tiny-llava``, ``tiny-qwen2-vl``), built on first use.

    Building goes to a temporary sibling that is renamed into place, so concurrent processes never see
    a half-written folder.

    Raises:
        ValueError: an unknown name.
    """
    from mmtrain.components.lm.tokenizers import cache_root

    if name not in TINY_VLMS:
        raise ValueError(f"unknown tiny VLM {name!r}; builtin ones: {sorted(TINY_VLMS)}")
    folder = cache_root(cache_dir) / "models" / name

    def write(staging: Path) -> None:
        with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left as it was
            torch.manual_seed(SEED)
            TINY_VLMS[name](staging)

    return build_stamped_folder(folder, write, _stamp(name), STAMP_FILE)

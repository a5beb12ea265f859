"""QLoRA's quantized LM: loading a pretrained causal LM 4-bit NF4 or 8-bit through bitsandbytes (GPU or CPU).

Used by :class:`~mmtrain.models.llm.LLMModel` when ``model.lora.quantize`` is set (see
:mod:`mmtrain.components.lm.lora` for the adapters, exports and what trains).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from peft import prepare_model_for_kbit_training
from torch import nn

from mmtrain.components.encoders.hf_tower import build_hf_config, build_hf_model
from mmtrain.components.lm.decoder import CausalLMDecoder, _AutoCausalLM
from mmtrain.components.paths import resolve_pretrained_path


def check_quantization(quantize: str) -> None:
    """Raise unless the bitsandbytes package imports (it loads the quantized LM, on a GPU or the CPU)."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ValueError(
            f"model.lora.quantize={quantize!r} (QLoRA) loads the LM {quantize}-quantized with bitsandbytes, which "
            f"cannot be imported here ({err}). Install it: pip install 'mmtrain[qlora]' (bitsandbytes); or set "
            "model.lora.quantize: null (plain LoRA, the LM in full precision)."
        ) from err


def keep_training_layout(lm: nn.Module) -> None:
    """Keep this LM's 4-bit layers out of bitsandbytes' CPU inference repacking (per layer, this model only).

    On a CPU with AVX512-BF16, bitsandbytes 0.50's ``Linear4bit`` repacks its weight for a faster kernel
    the first time it runs in eval mode, and then takes that inference-only path in training too: after
    Lightning's validation sanity check the next training step fails (an in-place bias add on a tensor
    that needs its gradient). Training alternates train and eval, so these layers stay in the layout both
    share; CPU evaluation is then a little slower, nothing else changes. A GPU never repacks.
    """
    import bitsandbytes as bnb

    for module in lm.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def build_quantized_decoder(spec: Mapping[str, Any], vocab_size: int | None, quantize: str) -> CausalLMDecoder:
    """The decoder of ``spec`` with its pretrained LM loaded ``quantize``d (QLoRA).

    Same arguments as :class:`CausalLMDecoder` (``spec`` without ``_target_``); the LM is loaded by
    ``build_hf_model`` with a ``BitsAndBytesConfig`` onto the current CUDA device, else the CPU (compute
    in bfloat16/float16 on a GPU, float32 on the CPU), resized like ``CausalLMDecoder`` does, then
    prepared by ``peft.prepare_model_for_kbit_training``.
    """
    check_quantization(quantize)
    from transformers import BitsAndBytesConfig

    folder = resolve_pretrained_path(spec.get("pretrained_path"), what="model.decoder.pretrained_path")
    if folder is None:
        raise ValueError("model.lora.quantize quantizes a pretrained LM: set model.decoder.pretrained_path.")
    cuda = torch.cuda.is_available()
    compute = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    bnb = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True)
           if quantize == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
    hf_config = build_hf_config(str(spec["model_type"]), spec.get("config"), folder)
    lm = build_hf_model(_AutoCausalLM, hf_config, folder, quantization_config=bnb,
                        device_map={"": torch.cuda.current_device() if cuda else "cpu"})
    decoder = CausalLMDecoder.__new__(CausalLMDecoder)
    nn.Module.__init__(decoder)  # CausalLMDecoder.__init__ would first load the LM in full precision
    if vocab_size is not None and int(vocab_size) < lm.get_input_embeddings().num_embeddings:
        raise ValueError(f"the tokenizer has {vocab_size} tokens, fewer than the LM in {folder}; use its tokenizer.")
    if vocab_size is not None and int(vocab_size) > lm.get_input_embeddings().num_embeddings:
        lm.resize_token_embeddings(int(vocab_size), mean_resizing=False)
    keep_training_layout(lm)
    decoder.lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
    decoder.hidden_size = int(lm.get_input_embeddings().embedding_dim)
    decoder.vocab_size = int(lm.get_input_embeddings().num_embeddings)
    return decoder

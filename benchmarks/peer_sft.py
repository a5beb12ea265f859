"""Peer row: a LoRA instruction-tuning step of a VLM (an LM reading image features as tokens), mmtrain
against the transformers ``Trainer`` + peft (what LLaMA-Factory and ms-swift run underneath).

The model: a LLaVA-1.5-shaped VLM with random weights written once by transformers (CLIP vision tower
224 px / patch 16: 196 image tokens, 6 layers of width 384; a Llama LM of width 768, 6 layers, GPT-2's
50k vocabulary, untied head: ~120M parameters; ``--quick``: 4 LM layers of width 512). Data: 48 image +
question -> one-word answer samples written as an instruction JSONL with PNG files; batch 4, float32.

- mmtrain: ``mmtrain train experiment=vlm_vqa`` on that data and base (its processor, chat template,
  -100 masking of all but the answer, LoRA r=8 on q/k/v/o with the projector trained in full, AdamW
  lr 2e-3, gradient clipping 1.0), one validation batch after the steps, with every default callback (checkpointing, gradient
  audit...), through Lightning as a user runs it.
- peer: ``transformers.Trainer`` on ``peft.get_peft_model`` of the same base (the same LoRA settings and
  ``modules_to_save`` projector), fed the same rows (``input_ids``, ``attention_mask``, ``labels`` with -100
  on the prompt, ``pixel_values``), AdamW (torch) at the same learning rate, weight decay and clipping.

Each runs in a fresh process (its own ``VmHWM``); after two warm-up steps the peak-RSS mark is reset
(``/proc/self/clear_refs``) and the next steps are timed one by one. Rows: median step time and the steps'
peak RSS, mmtrain / peer (goal <= 1.0 each).

Run: ``.venv/bin/python benchmarks/peer_sft.py [--quick]``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Result, console, goal_row, run_child, standalone  # noqa: E402

ROOT = Path(tempfile.gettempdir()) / "mmtrain-bench-peer"
VISION = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6, "num_attention_heads": 6,
          "image_size": 224, "patch_size": 16}
TEXT = {"full": {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 6, "num_attention_heads": 12,
                 "num_key_value_heads": 4, "max_position_embeddings": 1024},
        "quick": {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4, "num_attention_heads": 8,
                  "num_key_value_heads": 4, "max_position_embeddings": 1024}}
SAMPLES, BATCH, WARMUP = 48, 4, 2
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
LR, WEIGHT_DECAY = 2e-3, 0.01

PROBE = r"""
import time

def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)) / 1024

class Steps:
    def __init__(self, warmup):
        self.warmup, self.times, self.count, self.peak = warmup, [], 0, None
    def begin(self):
        self.start = time.perf_counter()
    def end(self):
        self.count += 1
        if self.count == self.warmup:
            open("/proc/self/clear_refs", "w").write("5")  # the measured steps' own peak from here
        elif self.count > self.warmup:
            self.times.append(time.perf_counter() - self.start)
            self.peak = status("VmHWM")
"""

MMTRAIN = PROBE + r"""
import json, statistics, sys
import lightning.pytorch as pl
sys.path.insert(0, sys.argv[3])
from harness import train_probed

root, base = sys.argv[1], sys.argv[2]
steps = Steps(""" + str(WARMUP) + r""")

class Probe(pl.Callback):
    def on_train_batch_start(self, *args):
        steps.begin()
    def on_train_batch_end(self, *args):
        steps.end()

split = [f"data.{s}.{k}={v}" for s in ("train", "val", "test") for k, v in (("path", f"{root}/qa.jsonl"), ("root", root))]
train_probed(["experiment=vlm_vqa", "~data.prepare", *split, f"model.vlm.pretrained_path={base}",
              f"data.batch_size=""" + str(BATCH) + r"""", "data.num_workers=0", "trainer.max_epochs=1",
              "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
              "callbacks.progress=null", "logger.tensorboard=null", "task.param_groups.projector=null",
              "task.optimizer.lr=""" + str(LR) + r"""", "model.lora.dropout=0.0", "model.lora.r=8", "model.lora.alpha=16",
              "model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]", f"run_dir={root}/run-mmtrain"], [Probe()])
print(json.dumps({"step_s": statistics.median(steps.times), "peak_mb": steps.peak, "steps": len(steps.times)}))
"""

PEER = PROBE + r"""
import json, statistics, sys
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForImageTextToText, Trainer, TrainerCallback, TrainingArguments
from mmtrain.data.formats.instruction import InstructionDataset
from mmtrain.models.vlm_processing import build_vlm_processor

root, base = sys.argv[1], sys.argv[2]
processor = build_vlm_processor(pretrained_path=base, prompt={"template": "{image}{text}", "max_length": 512})
samples = InstructionDataset(path=f"{root}/qa.jsonl", root=root, modalities=["image", "text"])

class Rows(torch.utils.data.Dataset):
    def __len__(self):
        return len(samples)
    def __getitem__(self, index):
        return samples[index]

def collate(batch):
    made = processor.collate(batch)
    return {"input_ids": made["lm_input_ids"], "attention_mask": made["lm_attention_mask"], "labels": made["lm_labels"],
            "pixel_values": made["pixel_values"]}

model = AutoModelForImageTextToText.from_pretrained(base)
model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, modules_to_save=["multi_modal_projector"],
                                         target_modules=r"model\.language_model\..*\.(q_proj|k_proj|v_proj|o_proj)"))
steps = Steps(""" + str(WARMUP) + r""")

class Probe(TrainerCallback):
    def on_step_begin(self, *args, **kwargs):
        steps.begin()
    def on_step_end(self, *args, **kwargs):
        steps.end()

args = TrainingArguments(output_dir=f"{root}/run-peer", per_device_train_batch_size=""" + str(BATCH) + r""",
                         learning_rate=""" + str(LR) + r""", weight_decay=""" + str(WEIGHT_DECAY) + r""", max_grad_norm=1.0,
                         num_train_epochs=1, optim="adamw_torch", lr_scheduler_type="cosine", warmup_steps=1,
                         logging_steps=10_000, save_strategy="no", eval_strategy="no", report_to=[],
                         dataloader_num_workers=0, remove_unused_columns=False, use_cpu=True, seed=0)
Trainer(model=model, args=args, train_dataset=Rows(), data_collator=collate, callbacks=[Probe()]).train()
print(json.dumps({"step_s": statistics.median(steps.times), "peak_mb": steps.peak, "steps": len(steps.times)}))
"""


def prepare(size: str) -> tuple[Path, Path]:
    """The base VLM of ``size`` (written once) and the data folder (``qa.jsonl`` + PNGs)."""
    import numpy as np
    from PIL import Image

    base, data = ROOT / f"base-{size}", ROOT / "data"
    if not (base / "config.json").is_file():
        import torch

        from mmtrain.components.vlm.tiny import write_llava

        torch.manual_seed(0)
        write_llava(base, vision=VISION, text=TEXT[size])
        console.print(f"wrote the {size} base VLM to {base}")
    if not (data / "qa.jsonl").is_file():
        rng = np.random.default_rng(0)
        (data / "img").mkdir(parents=True, exist_ok=True)
        rows = []
        for index in range(SAMPLES):
            Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(data / "img" / f"{index}.png")
            rows.append({"id": str(index), "image": f"img/{index}.png", "prompt": "Which digit is shown in this picture?",
                         "response": ["zero", "one", "two", "three"][index % 4]})
        (data / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return base, data


def run(quick: bool = False) -> list[Result]:
    base, data = prepare("quick" if quick else "full")
    params = sum(f.stat().st_size for f in base.glob("*.safetensors")) / 4  # float32 weights
    here = str(Path(__file__).resolve().parent)
    ours = run_child(MMTRAIN, str(data), str(base), here)
    peer = run_child(PEER, str(data), str(base), here)
    for name, result in (("mmtrain", ours), ("transformers Trainer + peft", peer)):
        console.print(f"  {name}: {result['step_s'] * 1000:.0f} ms a step (median of {result['steps']}), "
                      f"steps' peak RSS {result['peak_mb']:.0f} MiB")
    label = f"LoRA SFT step of a {params / 1e6:.0f}M-parameter LLaVA-shaped VLM"
    return [
        goal_row(f"{label}: step time, mmtrain vs transformers Trainer + peft", f"{ours['step_s'] * 1000:.0f} ms",
                 f"{peer['step_s'] * 1000:.0f} ms", ours["step_s"] / peer["step_s"], 1.0, at_most=True),
        goal_row(f"{label}: peak RSS of the steps, mmtrain vs transformers Trainer + peft", f"{ours['peak_mb']:.0f} MiB",
                 f"{peer['peak_mb']:.0f} MiB", ours["peak_mb"] / peer["peak_mb"], 1.0, at_most=True),
    ]


def main() -> int:
    return standalone("Peer: LoRA SFT step, mmtrain vs transformers Trainer + peft", run, "a smaller LM")


if __name__ == "__main__":
    raise SystemExit(main())

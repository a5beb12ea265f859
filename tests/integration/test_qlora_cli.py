"""QLoRA from the command line on this CPU: a pretrained GPT-2 loaded 4-bit, trained through Lightning
(sanity validation, checkpoints without the frozen quantized base, best-checkpoint reload), exported,
re-exported from its checkpoint and asked a question."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _cli import run_mmtrain
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

pytestmark = [pytest.mark.slow, pytest.mark.long]  # minutes of CPU: in the long run (README, Tests)


def test_qlora_4bit_trains_exports_and_predicts(tmp_path: Path) -> None:
    base = tmp_path / "gpt2-base"
    torch.manual_seed(0)  # GPT-2's own vocabulary (the prompt uses its real tokenizer); widths >= 64
    AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", vocab_size=50257, n_embd=64, n_layer=2, n_head=2,
                                                          n_inner=128, n_positions=256)).save_pretrained(base)
    run = tmp_path / "run"
    done = run_mmtrain("train", "experiment=emotion_llm", "data.prepare.size=tiny", "trainer.max_epochs=2",
                       f"model.decoder.pretrained_path={base}", "model.decoder.config=null", "model.lora.quantize=4bit",
                       "callbacks.progress=null", f"data_root={tmp_path / 'data'}", f"run_dir={run}", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    quantized = [k for k in state if k.endswith((".absmax", ".quant_map", "attn.c_attn.base_layer.weight"))]
    assert not quantized, quantized  # the frozen 4-bit layers come from the base folder, not the checkpoint
    assert [k for k in state if ".lora_A." in k]
    assert (run / "export" / "adapter" / "adapter_config.json").is_file()
    adapter = json.loads((run / "export" / "adapter" / "config.json").read_text())
    assert adapter["lora"]["quantize"] == "4bit"
    again = run_mmtrain("export", str(best), "--out", str(tmp_path / "again"), cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    ours, theirs = load_file(tmp_path / "again" / "model.safetensors"), load_file(run / "export" / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    answer = run_mmtrain("predict", str(run), "--text", "seven", cwd=tmp_path)
    assert answer.returncode == 0, answer.stdout[-2000:] + answer.stderr[-3000:]
    assert json.loads(answer.stdout[answer.stdout.index("{"):])["label"] in adapter["id2label"].values()

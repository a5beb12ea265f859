"""The open_clip image tower, as far as it runs without open_clip (which needs a torchvision built for the installed
torch; beside this project's CPU torch wheel it does not import): finding a checkpoint by folder or Hub id offline,
the preprocessing its open_clip_config.json declares reaching data.processor, and the error that says what to
install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _hub import write_hub_cache
from safetensors.torch import save_file

from mmtrain.components.encoders.open_clip_image import open_clip_folder, open_clip_preprocess
from mmtrain.config.compose import compose_config
from mmtrain.engine.checkpoint_settings import follow_checkpoints

# the shape of laion/CLIP-convnext_base_w-laion2B-s13B-b82K's open_clip_config.json (the emotion system's tower)
CONFIG = {
    "model_cfg": {"embed_dim": 640, "vision_cfg": {"timm_model_name": "convnext_base", "timm_model_pretrained": False,
                                                   "timm_pool": "", "timm_proj": "linear", "image_size": 256},
                  "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 640, "heads": 10, "layers": 12}},
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
}


def checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(CONFIG))
    save_file({"visual.head.proj.weight": torch.zeros(2, 2)}, str(folder / "open_clip_model.safetensors"))
    return folder


def test_a_checkpoint_folder_declares_its_preprocessing(tmp_path: Path) -> None:
    folder = checkpoint(tmp_path / "convnext")
    assert open_clip_folder(str(folder)) == folder
    assert open_clip_preprocess(folder) == {"image_size": 256, "image_mean": CONFIG["preprocess_cfg"]["mean"],
                                            "image_std": CONFIG["preprocess_cfg"]["std"]}
    cfg = compose_config(["experiment=demo", "model/encoders/image=open_clip",
                          f"model.encoders.image.pretrained_path={folder}"])
    changed = follow_checkpoints(cfg)
    assert cfg.data.processor.image_size == 256 and list(cfg.data.processor.image_std) == CONFIG["preprocess_cfg"]["std"]
    assert "data.processor.image_mean" in changed
    with pytest.raises(FileNotFoundError, match="has no open_clip_config.json"):
        open_clip_folder(str(tmp_path))
    with pytest.raises(ValueError, match="without open_clip's prefix \\('laion/x'\\)"):
        open_clip_folder("hf-hub:laion/x")


FIND = """
import json, sys
from mmtrain.components.encoders.open_clip_image import OpenClipImageEncoder, open_clip_folder
out = {"folder": str(open_clip_folder(sys.argv[1]))}
try:
    OpenClipImageEncoder(pretrained_path=sys.argv[1])
except ImportError as err:
    out["error"] = str(err)
print(json.dumps(out))
"""


def test_found_by_hub_id_offline_and_the_missing_library_is_named(tmp_path: Path) -> None:
    cache = tmp_path / "hf" / "hub"
    snapshot = write_hub_cache(checkpoint(tmp_path / "saved"), cache, "laion/CLIP-convnext_base_w-laion2B-s13B-b82K")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent)}
    done = subprocess.run([sys.executable, "-c", FIND, "laion/CLIP-convnext_base_w-laion2B-s13B-b82K"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["folder"] == str(snapshot)
    # open_clip is not installed beside the CPU torch wheel (constraints.txt): the tower says what to install
    assert "pip install 'mmtrain[open-clip]'" in out["error"] and f"torch {torch.__version__}" in out["error"]

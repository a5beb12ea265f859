"""ContrastiveModel: one projection per slot, presence, Matryoshka prefixes, export round-trip."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import mmtrain.models  # noqa: F401  (registers the Auto classes)
from mmtrain.models.contrastive import ContrastiveModel
from mmtrain.models.contrastive import build_contrastive_model

VIT = {"_target_": "mmtrain.components.encoders.hf_image.HFImageEncoder", "model_type": "vit", "config": {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
    "image_size": 16, "patch_size": 8}}
BERT = {"_target_": "mmtrain.components.encoders.hf_text.HFTextEncoder", "model_type": "bert", "config": {
    "vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 2}}
AUDIO = {"_target_": "mmtrain.components.encoders.audio_conv1d.AudioConv1DEncoder", "num_mel_bins": 80, "hidden_dim": 24,
         "num_layers": 1}
PROJECTION = {"_target_": "mmtrain.components.heads.projection.ProjectionHead", "output_dim": 16, "hidden_dim": 32,
              "matryoshka_dims": [8, 4]}


def tiny_model(audio: bool = False, **kwargs) -> ContrastiveModel:
    torch.manual_seed(0)
    encoders = {"image": VIT, "text": BERT, **({"audio": AUDIO} if audio else {})}
    return build_contrastive_model(encoders=encoders, projection=PROJECTION, id2label={},
                                   allowed_target_prefixes=["mmtrain."], **kwargs)


def tiny_batch(size: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {"pixel_values": torch.randn(size, 3, 16, 16), "input_ids": torch.randint(100, 2000, (size, 6)),
            "attention_mask": torch.ones(size, 6, dtype=torch.long), "input_features": torch.randn(size, 80, 100),
            "text_present": torch.tensor([True] * (size - 1) + [False])}


def test_forward_shapes_presence_and_separate_projections() -> None:
    model = tiny_model(audio=True)
    assert set(model.projection) == {"image", "text", "audio"}
    assert model.projection["image"].net[0].in_features == 32 and model.projection["audio"].net[0].in_features == 24
    assert model.projection["image"].net[0].weight.data_ptr() != model.projection["text"].net[0].weight.data_ptr()
    assert model.matryoshka_dims == [16, 8, 4] and model.embedding_dim == 16
    out = model(**tiny_batch())
    assert {k: tuple(v.shape) for k, v in out.embeddings.items()} == {"image": (4, 16), "text": (4, 16), "audio": (4, 16)}
    assert out.present["text"].tolist() == [True, True, True, False]
    assert out.present["image"].all()
    for embedding in out.embeddings.values():
        assert torch.allclose(embedding.norm(dim=-1), torch.ones(4), atol=1e-5)
    model.check_batch(tiny_batch())
    assert set(model.components()) == {"image", "text", "audio", "projection"}


def test_backward_reaches_every_trainable_part_and_frozen_text_stays() -> None:
    model = tiny_model(trainable={"text": False})
    out = model(**tiny_batch())
    (out.embeddings["image"] @ out.embeddings["text"].T).diag().sum().backward()
    assert model.encoders["image"].model.embeddings.patch_embeddings.projection.weight.grad is not None
    assert all(p.grad is None for p in model.encoders["text"].parameters())
    assert all(p.grad is not None for p in model.projection.parameters())
    assert not model.encoders["text"].training


def test_a_perceiver_per_encoder_feeds_each_projection_and_trains() -> None:
    resampler = {"_target_": "mmtrain.components.lm.projectors.PerceiverResampler", "num_tokens": 3, "depth": 1,
                 "num_heads": 2}
    model = tiny_model(audio=True, resampler=resampler)
    assert set(model.resampler) == {"image", "text", "audio"} and model.resampler["audio"].output_dim == 24
    assert model.resampler["image"].latents.data_ptr() != model.resampler["text"].latents.data_ptr()
    batch = tiny_batch()
    out = model(**batch)
    assert {k: tuple(v.shape) for k, v in out.embeddings.items()} == {"image": (4, 16), "text": (4, 16), "audio": (4, 16)}
    encoded = model.encode_one("image", **batch)
    expected = model.projection["image"](model.resampler["image"](encoded).mean(dim=1))
    assert torch.allclose(out.embeddings["image"], expected, atol=1e-6)  # latents, averaged, then the projection
    (out.embeddings["image"] @ out.embeddings["text"].T).diag().sum().backward()
    assert all(p.grad is not None for p in model.resampler["image"].parameters())
    assert "resampler" in model.components()
    model.check_batch(tiny_batch())


def test_matryoshka_prefixes_are_renormalised_prefixes() -> None:
    model = tiny_model()
    out = model(**tiny_batch())
    nested = model.projection["image"].nested(out.embeddings["image"])
    assert sorted(nested) == [4, 8, 16]
    for dim, part in nested.items():
        expected = torch.nn.functional.normalize(out.embeddings["image"][:, :dim], dim=-1)
        assert torch.allclose(part, expected) and part.shape == (4, dim)


def test_misfit_projection_names_its_key() -> None:
    model = tiny_model()
    model.projection["image"] = torch.nn.Linear(7, 16)
    with pytest.raises(ValueError, match="model.projection"):
        model.check_batch(tiny_batch())


def test_one_slot_is_refused() -> None:
    with pytest.raises(ValueError, match="at least two encoder slots"):
        build_contrastive_model(encoders={"image": VIT}, projection=PROJECTION, id2label={},
                                allowed_target_prefixes=["mmtrain."])


FRESH = """
import sys, torch
import mmtrain.models
from transformers import AutoModel
model = AutoModel.from_pretrained(sys.argv[1])
batch = torch.load(sys.argv[2])
with torch.no_grad():
    out = model(**batch)
torch.save({"class": type(model).__name__, "embeddings": out.embeddings}, sys.argv[3])
"""


@pytest.mark.slow
def test_export_round_trip_in_fresh_process(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    pretrained = tmp_path / "tiny-bert"  # a "downloaded" tower, deleted before loading the export
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(pretrained)
    text = {"_target_": "mmtrain.components.encoders.hf_text.HFTextEncoder", "model_type": "bert", "pretrained_path": str(pretrained)}
    torch.manual_seed(0)
    model = build_contrastive_model(encoders={"image": VIT, "text": text, "audio": AUDIO}, projection=PROJECTION,
                                    id2label={}, allowed_target_prefixes=["mmtrain."]).eval()
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch).embeddings
    model.save_pretrained(tmp_path / "export")
    torch.save(batch, tmp_path / "batch.pt")
    import shutil

    shutil.rmtree(pretrained)
    assert isinstance(AutoModel.from_pretrained(tmp_path / "export"), ContrastiveModel)
    subprocess.run([sys.executable, "-c", FRESH, str(tmp_path / "export"), str(tmp_path / "batch.pt"),
                    str(tmp_path / "out.pt")], check=True, cwd=tmp_path)
    got = torch.load(tmp_path / "out.pt")
    assert got["class"] == "ContrastiveModel"
    for name, embedding in expected.items():
        assert torch.equal(got["embeddings"][name], embedding), name

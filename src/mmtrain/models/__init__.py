"""Model kinds: config, model and processor classes, one module per kind, registered with
transformers' Auto classes.

Importing this package imports each kind's module, and each registers itself
(:func:`mmtrain.models.registry.register_model_kind`), so an exported folder loads with ``AutoConfig``,
``AutoModel``, ``AutoModelForSequenceClassification`` and ``AutoProcessor`` after ``import mmtrain.models``.
"""

import mmtrain.components.decoders  # noqa: F401  (registers model_type "mmtrain_trm" with AutoConfig/AutoModelForCausalLM)
from mmtrain.models.registry import model_kinds

model_kinds()  # every module of this package: each kind registers itself

from mmtrain.models.configuration import MultimodalConfig  # noqa: E402
from mmtrain.models.contrastive import ContrastiveConfig, ContrastiveModel  # noqa: E402
from mmtrain.models.llm import LLMConfig, LLMModel  # noqa: E402
from mmtrain.models.multimodal import MultimodalModel  # noqa: E402
from mmtrain.models.pairwise import PairwiseConfig, PairwiseModel  # noqa: E402
from mmtrain.models.processing import MultimodalProcessor  # noqa: E402

__all__ = ["ContrastiveConfig", "ContrastiveModel", "LLMConfig", "LLMModel", "MultimodalConfig", "MultimodalModel",
           "MultimodalProcessor", "PairwiseConfig", "PairwiseModel"]

"""The export boundary: config, model and processor classes, registered with transformers' Auto classes.

``import mmtrain`` registers them, so an exported folder loads with ``AutoConfig``, ``AutoModel``,
``AutoModelForSequenceClassification`` and ``AutoProcessor``.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoProcessor,
)

import mmtrain.decoders  # noqa: F401  (registers model_type "mmtrain_trm" with AutoConfig/AutoModelForCausalLM)
from mmtrain.hf.configuration import MultimodalConfig
from mmtrain.hf.contrastive import ContrastiveConfig, ContrastiveModel
from mmtrain.hf.llm import LLMConfig, LLMModel
from mmtrain.hf.modeling import MultimodalModel
from mmtrain.hf.pairwise import PairwiseConfig, PairwiseModel
from mmtrain.hf.processing import MultimodalProcessor

AutoConfig.register(MultimodalConfig.model_type, MultimodalConfig, exist_ok=True)
AutoModel.register(MultimodalConfig, MultimodalModel, exist_ok=True)
AutoModelForSequenceClassification.register(MultimodalConfig, MultimodalModel, exist_ok=True)
AutoProcessor.register(MultimodalConfig, MultimodalProcessor, exist_ok=True)
AutoConfig.register(PairwiseConfig.model_type, PairwiseConfig, exist_ok=True)
AutoModel.register(PairwiseConfig, PairwiseModel, exist_ok=True)
AutoModelForSequenceClassification.register(PairwiseConfig, PairwiseModel, exist_ok=True)
AutoProcessor.register(PairwiseConfig, MultimodalProcessor, exist_ok=True)
AutoConfig.register(ContrastiveConfig.model_type, ContrastiveConfig, exist_ok=True)
AutoModel.register(ContrastiveConfig, ContrastiveModel, exist_ok=True)
AutoProcessor.register(ContrastiveConfig, MultimodalProcessor, exist_ok=True)
AutoConfig.register(LLMConfig.model_type, LLMConfig, exist_ok=True)
AutoModel.register(LLMConfig, LLMModel, exist_ok=True)

__all__ = ["ContrastiveConfig", "ContrastiveModel", "LLMConfig", "LLMModel", "MultimodalConfig", "MultimodalModel", "MultimodalProcessor", "PairwiseConfig", "PairwiseModel"]

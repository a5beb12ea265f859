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

from mmtrain.hf.configuration import MultimodalConfig
from mmtrain.hf.modeling import MultimodalModel
from mmtrain.hf.processing import MultimodalProcessor

AutoConfig.register(MultimodalConfig.model_type, MultimodalConfig, exist_ok=True)
AutoModel.register(MultimodalConfig, MultimodalModel, exist_ok=True)
AutoModelForSequenceClassification.register(MultimodalConfig, MultimodalModel, exist_ok=True)
AutoProcessor.register(MultimodalConfig, MultimodalProcessor, exist_ok=True)

__all__ = ["MultimodalConfig", "MultimodalModel", "MultimodalProcessor"]

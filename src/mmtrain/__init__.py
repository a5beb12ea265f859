"""mmtrain: train multimodal models (video, audio, image, text) from YAML.

Importing the package registers ``MultimodalConfig``/``MultimodalModel``/``MultimodalProcessor``
with transformers' Auto classes.
"""

from mmtrain.hf import MultimodalConfig, MultimodalModel, MultimodalProcessor

__version__ = "0.1.0"
__all__ = ["MultimodalConfig", "MultimodalModel", "MultimodalProcessor", "__version__"]

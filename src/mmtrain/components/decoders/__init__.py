"""mmtrain's own causal-LM decoders, registered with transformers' Auto classes.

Importing this package (``import mmtrain.models`` does) registers ``model_type`` ``"mmtrain_trm"``, so
``AutoConfig.for_model("mmtrain_trm", ...)``, ``AutoModelForCausalLM.from_config(...)`` and
``AutoModelForCausalLM.from_pretrained(<save_pretrained folder>)`` build the tiny recursive decoder.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from mmtrain.components.decoders.recursive import TinyRecursiveConfig, TinyRecursiveForCausalLM, TinyRecursiveModel

AutoConfig.register(TinyRecursiveConfig.model_type, TinyRecursiveConfig, exist_ok=True)
AutoModelForCausalLM.register(TinyRecursiveConfig, TinyRecursiveForCausalLM, exist_ok=True)

__all__ = ["TinyRecursiveConfig", "TinyRecursiveForCausalLM", "TinyRecursiveModel"]

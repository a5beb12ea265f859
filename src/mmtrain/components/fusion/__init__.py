"""Fusion modules: ``forward(dict[str, EncoderOutput]) -> EncoderOutput`` with ``output_dim``.

Each takes ``input_dims`` (modality name -> encoder ``output_dim``), injected by the model
builder, plus its own hyper-parameters. Shared pieces live in :mod:`mmtrain.components.fusion.layers`
(RoPE, masked attention, gated attention, blocks) and :mod:`mmtrain.components.fusion.projection`
(input checks, per-modality projection).
"""

from mmtrain.components.fusion.bottleneck import BottleneckFusion
from mmtrain.components.fusion.concat import ConcatPoolFusion
from mmtrain.components.fusion.cross_attention import CrossAttentionFusion
from mmtrain.components.fusion.gated import GatedFusion
from mmtrain.components.fusion.identity import IdentityFusion
from mmtrain.components.fusion.perceiver import PerceiverResampler

__all__ = [
    "BottleneckFusion",
    "ConcatPoolFusion",
    "CrossAttentionFusion",
    "GatedFusion",
    "IdentityFusion",
    "PerceiverResampler",
]

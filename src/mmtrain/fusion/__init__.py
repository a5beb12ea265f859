"""Fusion modules: ``forward(dict[str, EncoderOutput]) -> EncoderOutput`` with ``output_dim``.

Each takes ``input_dims`` (modality name -> encoder ``output_dim``), injected by the model
builder, plus its own hyper-parameters. Shared pieces live in :mod:`mmtrain.fusion.layers`
(RoPE, masked attention, gated attention, blocks) and :mod:`mmtrain.fusion.projection`
(input checks, per-modality projection).
"""

from mmtrain.fusion.bottleneck import BottleneckFusion
from mmtrain.fusion.concat import ConcatPoolFusion
from mmtrain.fusion.cross_attention import CrossAttentionFusion
from mmtrain.fusion.gated import GatedFusion
from mmtrain.fusion.identity import IdentityFusion
from mmtrain.fusion.perceiver import PerceiverResampler

__all__ = [
    "BottleneckFusion",
    "ConcatPoolFusion",
    "CrossAttentionFusion",
    "GatedFusion",
    "IdentityFusion",
    "PerceiverResampler",
]

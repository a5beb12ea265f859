"""Tiny recursive decoder (TRM-style): ONE small transformer block applied ``num_recursions`` times.

A causal language model in Hugging Face form (``PretrainedConfig`` / ``PreTrainedModel`` /
``GenerationMixin``), so it is swappable with GPT-2, Qwen2 or Llama wherever mmtrain builds a causal
LM with ``AutoModelForCausalLM.from_config(AutoConfig.for_model("mmtrain_trm", **config))``.

Architecture (pre-norm, weights shared across the recursion steps)::

    h = embed(input_ids)                      or h = inputs_embeds            [B, L, D]
    repeat num_recursions times (the SAME block each time):
        h = h + Attention(RMSNorm(h))         causal, multi-head, rotary positions (RoPE)
        h = h + MLP(RMSNorm(h))               SwiGLU (hidden_act="silu") or GELU MLP
    logits = lm_head(RMSNorm(h))                                              [B, L, V]

The LM head is tied to the input embeddings by default (``tie_word_embeddings=True``). Position
ids come from the 2-D attention mask (``cumsum - 1``), so left- and right-padded batches give, at
their real positions, the outputs of the unpadded sequences; padded keys are never attended to.
Generation uses a ``DynamicCache`` with one cache layer per recursion step (each step sees other
inputs, hence other keys/values), so prompts given as ``inputs_embeds`` generate too.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

_ACTIVATIONS = ("silu", "gelu")


class TinyRecursiveConfig(PretrainedConfig):
    """Config of :class:`TinyRecursiveForCausalLM` (``model_type`` ``"mmtrain_trm"``).

    Args:
        vocab_size: number of token embeddings ``V``.
        hidden_size: model width ``D``.
        intermediate_size: MLP width.
        num_attention_heads: heads ``H``; ``D / H`` must be even (rotary pairs).
        num_recursions: how many times the single shared block is applied (effective depth;
            also readable as ``num_hidden_layers``).
        hidden_act: ``"silu"`` (SwiGLU MLP) or ``"gelu"`` (two-layer GELU MLP).
        rope_theta: RoPE base frequency.
        rms_norm_eps: RMSNorm epsilon.
        max_position_embeddings: longest sequence the model is meant for (RoPE itself has no table).
        initializer_range: std of the normal init of linear and embedding weights.
        tie_word_embeddings: share the LM head weight with the input embeddings.
        use_cache: return a KV cache by default (in eval mode).
        pad_token_id / bos_token_id / eos_token_id: special token ids (used by ``generate``).
    """

    model_type = "mmtrain_trm"
    attribute_map: ClassVar[dict[str, str]] = {"num_hidden_layers": "num_recursions"}
    keys_to_ignore_at_inference: ClassVar[list[str]] = ["past_key_values"]

    vocab_size: int = 256
    hidden_size: int = 128
    intermediate_size: int = 256
    num_attention_heads: int = 4
    num_recursions: int = 4
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"TinyRecursiveConfig: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}; pick sizes with hidden_size % heads == 0."
            )
        if (self.hidden_size // self.num_attention_heads) % 2 != 0:
            raise ValueError(
                f"TinyRecursiveConfig: head size {self.hidden_size // self.num_attention_heads} is odd; "
                "rotary embeddings rotate pairs of channels, so hidden_size / num_attention_heads must be even."
            )
        if int(self.num_recursions) < 1:
            raise ValueError(f"TinyRecursiveConfig: num_recursions must be >= 1, got {self.num_recursions}.")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"TinyRecursiveConfig: hidden_act {self.hidden_act!r} is not supported; use one of {_ACTIVATIONS}."
            )

    @property
    def head_dim(self) -> int:
        """Per-head width ``D / H``."""
        return self.hidden_size // self.num_attention_heads


class TinyRecursiveRMSNorm(nn.Module):
    """RMSNorm over the last dim: ``x / sqrt(mean(x^2) + eps) * weight`` (computed in float32)."""

    def __init__(self, hidden_size: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., D]`` -> same shape and dtype."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_cos_sin(
    position_ids: torch.Tensor, *, head_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables for ``position_ids`` ``[B, L]`` -> ``(cos, sin)``, each ``[B, L, head_dim]``.

    Computed on the fly (no buffers), so meta-device loading has nothing to re-initialise.
    """
    exponents = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # [head_dim / 2]
    freqs = position_ids.float()[..., None] * inv_freq  # [B, L, head_dim / 2]
    angles = torch.cat((freqs, freqs), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, H, L, hd]`` by the angles of ``cos``/``sin`` ``[B, L, hd]`` (half-split pairs)."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def causal_padding_mask(
    attention_mask: torch.Tensor | None, *, batch_size: int, query_length: int, past_length: int,
    device: torch.device,
) -> torch.Tensor:
    """Boolean attention mask ``[B, 1, L, past + L]`` (True = may attend).

    Query ``i`` (absolute position ``past + i``) sees keys ``j <= past + i`` that are real in
    ``attention_mask`` ``[B, past + L]``; every query also sees itself, so rows of padding queries
    are never empty (an empty softmax row would turn into NaN and leak through ``0 * NaN``).
    """
    total = past_length + query_length
    query_pos = torch.arange(query_length, device=device)[:, None] + past_length
    key_pos = torch.arange(total, device=device)[None, :]
    allowed = (key_pos <= query_pos)[None, None].expand(batch_size, 1, query_length, total)
    if attention_mask is None:
        return allowed
    if attention_mask.dim() != 2 or attention_mask.shape != (batch_size, total):
        raise ValueError(
            f"attention_mask must be [batch, past + new] = [{batch_size}, {total}] (1 = real token, 0 = "
            f"padding), got {tuple(attention_mask.shape)}."
        )
    allowed = allowed & attention_mask.bool()[:, None, None, :]
    return allowed | (key_pos == query_pos)[None, None]


class TinyRecursiveAttention(nn.Module):
    """Causal multi-head self-attention with RoPE (``scaled_dot_product_attention``)."""

    def __init__(self, *, hidden_size: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]`` -> ``[B, H, L, hd]``."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, *, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
        cache: Cache | None = None, step: int = 0,
    ) -> torch.Tensor:
        """``x`` ``[B, L, D]``, ``cos``/``sin`` ``[B, L, hd]``, ``mask`` ``[B, 1, L, S]`` -> ``[B, L, D]``.

        With a ``cache``, this step's keys/values are appended to cache layer ``step`` and the
        attention runs over all ``S = past + L`` of them.
        """
        query = apply_rotary(self._heads(self.q_proj(x)), cos, sin)
        key = apply_rotary(self._heads(self.k_proj(x)), cos, sin)
        value = self._heads(self.v_proj(x))
        if cache is not None:
            key, value = cache.update(key, value, step)
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        batch, _, length, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))


class TinyRecursiveMLP(nn.Module):
    """SwiGLU (``silu``: ``down(silu(gate(x)) * up(x))``) or GELU (``down(gelu(up(x)))``) MLP."""

    def __init__(self, *, hidden_size: int, intermediate_size: int, hidden_act: str) -> None:
        super().__init__()
        self.hidden_act = hidden_act
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False) if hidden_act == "silu" else None
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, D]`` -> ``[B, L, D]``."""
        if self.gate_proj is not None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.gelu(self.up_proj(x)))


class TinyRecursiveBlock(GradientCheckpointingLayer):
    """The one shared pre-norm block: attention and MLP, each with a residual (recomputed in the backward
    pass, once per recursion, under gradient checkpointing)."""

    def __init__(self, config: TinyRecursiveConfig) -> None:
        super().__init__()
        self.input_norm = TinyRecursiveRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.attn = TinyRecursiveAttention(hidden_size=config.hidden_size, num_heads=config.num_attention_heads)
        self.post_attention_norm = TinyRecursiveRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = TinyRecursiveMLP(
            hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            hidden_act=config.hidden_act,
        )

    def forward(self, x: torch.Tensor, **attn_kwargs: Any) -> torch.Tensor:
        """``x`` ``[B, L, D]`` -> ``[B, L, D]`` (``attn_kwargs`` go to :class:`TinyRecursiveAttention`)."""
        x = x + self.attn(self.input_norm(x), **attn_kwargs)
        return x + self.mlp(self.post_attention_norm(x))


class TinyRecursivePreTrainedModel(PreTrainedModel):
    """Shared Hugging Face plumbing (config class, weight init: normal(0, initializer_range), norms = 1)."""

    config_class = TinyRecursiveConfig
    config: TinyRecursiveConfig
    base_model_prefix = "model"
    _no_split_modules: ClassVar[list[str]] = ["TinyRecursiveBlock"]
    supports_gradient_checkpointing = True
    _skip_keys_device_placement: ClassVar[list[str]] = ["past_key_values"]


class TinyRecursiveModel(TinyRecursivePreTrainedModel):
    """Embeddings + the shared block applied ``num_recursions`` times + final RMSNorm (no LM head)."""

    def __init__(self, config: TinyRecursiveConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.block = TinyRecursiveBlock(config)
        self.norm = TinyRecursiveRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Exactly one of ``input_ids`` ``[B, L]`` / ``inputs_embeds`` ``[B, L, D]``.

        ``attention_mask`` ``[B, past + L]`` (1 real, 0 padding; left or right padding),
        ``position_ids`` ``[B, L]`` (default: from the mask, else ``past .. past + L - 1``).
        Returns ``last_hidden_state`` ``[B, L, D]`` (after the final norm), ``past_key_values``
        when caching, and ``hidden_states`` (``num_recursions + 1`` tensors ``[B, L, D]``: the
        embeddings, then each recursion's output, the last one normed) when asked.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("TinyRecursiveModel: pass exactly one of input_ids [B, L] or inputs_embeds [B, L, D].")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = bool(self.config.use_cache) and not self.training
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        cache = past_key_values if use_cache or past_key_values is not None else None
        batch, length, _ = inputs_embeds.shape
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = self._position_ids(attention_mask, batch, length, past, inputs_embeds.device)
        cos, sin = rotary_cos_sin(
            position_ids, head_dim=self.config.head_dim, theta=float(self.config.rope_theta),
            dtype=inputs_embeds.dtype,
        )
        mask = causal_padding_mask(
            attention_mask, batch_size=batch, query_length=length, past_length=past, device=inputs_embeds.device
        )
        hidden = inputs_embeds
        all_hidden: list[torch.Tensor] = [hidden]
        for step in range(int(self.config.num_recursions)):
            hidden = self.block(hidden, cos=cos, sin=sin, mask=mask, cache=cache, step=step)
            all_hidden.append(hidden)
        hidden = self.norm(hidden)
        all_hidden[-1] = hidden
        want_hidden = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return BaseModelOutputWithPast(
            last_hidden_state=hidden,
            past_key_values=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if want_hidden else None,
        )

    @staticmethod
    def _position_ids(
        attention_mask: torch.Tensor | None, batch: int, length: int, past: int, device: torch.device
    ) -> torch.Tensor:
        """``[B, L]`` positions of the new tokens: real tokens counted from 0 (padding -> 0)."""
        if attention_mask is None:
            return torch.arange(past, past + length, device=device)[None].expand(batch, length)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return positions[:, -length:]


class TinyRecursiveForCausalLM(TinyRecursivePreTrainedModel, GenerationMixin):
    """Tiny recursive decoder with an LM head (tied to the embeddings by default).

    Behaves like a Hugging Face causal LM: ``forward`` takes ``input_ids`` or ``inputs_embeds``
    (LLaVA-style pseudo-tokens), shifts ``labels`` internally (-100 ignored); ``generate`` works
    from token or embedding prompts (KV cache: one ``DynamicCache`` layer per recursion step);
    ``resize_token_embeddings`` resizes the embeddings and the tied head.
    """

    _tied_weights_keys: ClassVar[dict[str, str]] = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TinyRecursiveConfig) -> None:
        super().__init__(config)
        self.model = TinyRecursiveModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits ``[B, L, V]`` (only the last ``logits_to_keep`` positions if > 0).

        Inputs as in :meth:`TinyRecursiveModel.forward`. ``labels`` ``[B, L]`` are aligned with the
        inputs (token ``t+1`` is predicted at ``t``; the shift happens here); -100 is ignored and the
        loss is the mean over the remaining targets (or the sum / ``num_items_in_batch`` if given).
        Other keyword arguments from ``generate`` (``return_dict``, ``output_attentions``...) are ignored.
        """
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_hidden_states=output_hidden_states,
        )
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -int(logits_to_keep):]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = shifted_cross_entropy(logits, labels, num_items_in_batch=kwargs.get("num_items_in_batch"))
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states,
        )


def shifted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, *, num_items_in_batch: int | torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token loss: ``logits`` ``[B, L, V]`` at ``t`` against ``labels`` ``[B, L]`` at ``t+1``; -100 ignored."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels {tuple(labels.shape)} must match the logits' [batch, length] {tuple(logits.shape[:2])}; "
            "pass labels aligned with the inputs (the shift is done inside the model)."
        )
    targets = F.pad(labels, (0, 1), value=-100)[:, 1:].to(logits.device)
    flat_logits = logits.float().reshape(-1, logits.shape[-1])
    if num_items_in_batch is None:
        return F.cross_entropy(flat_logits, targets.reshape(-1), ignore_index=-100)
    total = F.cross_entropy(flat_logits, targets.reshape(-1), ignore_index=-100, reduction="sum")
    return total / num_items_in_batch

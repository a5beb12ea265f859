"""Behaviour specific to one fusion module each (the shared contract is in test_fusion_contract)."""

from __future__ import annotations

import pytest
import torch

from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.components.fusion import BottleneckFusion, CrossAttentionFusion, GatedFusion, IdentityFusion

DIMS = {"video": 24, "audio": 16, "text": 32}


def left_padded(inputs: dict[str, EncoderOutput]) -> dict[str, EncoderOutput]:
    """Same samples with padding moved to the front of every sequence."""
    result = {}
    for name, out in inputs.items():
        tokens, mask = out.tokens.clone(), out.mask.clone()
        for b in range(tokens.shape[0]):
            n = int(out.mask[b].sum())
            tokens[b] = torch.roll(out.tokens[b], shifts=tokens.shape[1] - n, dims=0)
            mask[b] = torch.roll(out.mask[b], shifts=tokens.shape[1] - n, dims=0)
        result[name] = EncoderOutput(tokens=tokens, mask=mask, pooled=out.pooled)
    return result


def test_bottleneck_gate_is_used(build, make_inputs) -> None:
    fusion = build("bottleneck").eval()
    inputs = make_inputs(2)
    with torch.no_grad():
        before = fusion(inputs).pooled
        fusion.layers[0]["video"].attn.gate_proj.bias.add_(3.0)
        after = fusion(inputs).pooled
    assert not torch.allclose(before, after, atol=1e-4)
    ungated = build("bottleneck", gated_attention=False)
    assert all(block.attn.gate_proj is None for layer in ungated.layers for block in layer.values())


def test_bottleneck_rope_positions_come_from_masks(build, make_inputs) -> None:
    fusion = build("bottleneck").eval()
    inputs = make_inputs(3)
    with torch.no_grad():
        expected = fusion(inputs).pooled
        torch.testing.assert_close(fusion(left_padded(inputs)).pooled, expected, atol=1e-5, rtol=0)


def test_bottleneck_rope_factor_changes_output_and_is_checked(build, make_inputs) -> None:
    torch.manual_seed(0)
    plain = build("bottleneck").eval()
    slow = build("bottleneck", rope_factor={"video": 0.25}).eval()
    slow.load_state_dict(plain.state_dict())
    assert slow.rope_factor == {"audio": 1.0, "text": 1.0, "video": 0.25}
    inputs = make_inputs(2)
    with torch.no_grad():
        assert not torch.allclose(plain(inputs).pooled, slow(inputs).pooled, atol=1e-4)
    kwargs = dict(input_dims=DIMS, hidden_dim=32, num_heads=4, num_layers=1, num_bottleneck_tokens=2)
    with pytest.raises(ValueError, match="'image'"):
        BottleneckFusion(**{**kwargs, "rope_factor": {"image": 2.0}})
    with pytest.raises(ValueError, match="even"):
        BottleneckFusion(**{**kwargs, "hidden_dim": 40, "num_heads": 8})


def test_bottleneck_average_skips_absent_modality(build, make_inputs) -> None:
    """With audio absent for sample 0, sample 0 equals a model that never had audio."""
    torch.manual_seed(0)
    full = build("bottleneck").eval()
    inputs = make_inputs(2)
    audio = inputs["audio"]
    mask = audio.mask.clone()
    mask[0] = False
    inputs["audio"] = EncoderOutput(tokens=audio.tokens, mask=mask, pooled=audio.pooled)
    two = build("bottleneck", {"video": 24, "text": 32}).eval()
    two.load_state_dict(full.state_dict(), strict=False)
    with torch.no_grad():
        expected = two({"video": inputs["video"], "text": inputs["text"]}).pooled[0]
        torch.testing.assert_close(full(inputs).pooled[0], expected, atol=1e-5, rtol=0)


def test_gated_gates_are_zero_for_absent_and_sum_to_one(build, make_inputs) -> None:
    fusion = build("gated").eval()
    inputs = make_inputs(3)
    video = inputs["video"]
    mask = video.mask.clone()
    mask[1] = False
    inputs["video"] = EncoderOutput(tokens=video.tokens, mask=mask, pooled=video.pooled)
    with torch.no_grad():
        out = fusion(inputs)
        vectors, present = out.tokens, out.mask
        gates = fusion.gates(vectors, present)
    names = fusion.projection.names  # sorted: audio, text, video
    assert gates[1, names.index("video")] == 0
    assert not present[1, names.index("video")]
    torch.testing.assert_close(gates.sum(-1), torch.ones(3))
    sigmoid = build("gated", gate="sigmoid")
    with pytest.raises(ValueError, match="gate"):
        GatedFusion(input_dims=DIMS, hidden_dim=32, gate="tanh")
    assert torch.isfinite(sigmoid(inputs).pooled).all()


def test_cross_attention_needs_two_modalities() -> None:
    with pytest.raises(ValueError, match="two modalities.*'text'"):
        CrossAttentionFusion(input_dims={"text": 32}, hidden_dim=32, num_heads=4, num_layers=1)


def test_cross_attention_reads_the_other_modalities(build, make_inputs) -> None:
    fusion = build("cross_attention").eval()
    inputs = make_inputs(2)
    changed = dict(inputs)
    audio = inputs["audio"]
    changed["audio"] = EncoderOutput(
        tokens=torch.randn_like(audio.tokens), mask=audio.mask, pooled=audio.pooled
    )
    with torch.no_grad():
        a, b = fusion(inputs), fusion(changed)
    video = slice(16, 21)  # sorted order audio(7), text(6), video(5)
    assert not torch.allclose(a.tokens[:, video], b.tokens[:, video], atol=1e-4)


def test_identity_passes_through_and_rejects_several_modalities(build, make_inputs) -> None:
    fusion = build("identity", {"text": 32})
    assert fusion.output_dim == 32
    inputs = make_inputs(2, names=["text"])
    assert fusion(inputs) is inputs["text"]
    with pytest.raises(ValueError, match="'audio'.*'video'"):
        IdentityFusion(input_dims={"video": 24, "audio": 16})
    with pytest.raises(ValueError, match="'audio'.*'text'"):
        fusion({**inputs, "audio": make_inputs(2, names=["audio"])["audio"]})
    with pytest.raises(ValueError, match="'video'"):
        fusion(make_inputs(2, names=["video"]))
    with pytest.raises(ValueError, match="'text'.*16"):
        build("identity", {"text": 16})(inputs)


def test_constructor_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        GatedFusion(DIMS, 32)  # type: ignore[misc]
    with pytest.raises(TypeError):
        BottleneckFusion(DIMS, 32, 4, 2, 4)  # type: ignore[misc]

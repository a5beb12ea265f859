"""Native encoders beyond the shipped YAMLs: edge cases of masking."""

from __future__ import annotations

import pytest
import torch

from mmtrain.components.encoders.conv1d import Conv1DEncoder
from mmtrain.components.encoders.video_frames import FrameEncoder

from ._helpers import ATOL, build, make_case


def test_conv1d_padding_content_is_irrelevant() -> None:
    """Garbage (even inf / NaN) in padded positions never reaches real positions."""
    torch.manual_seed(0)
    encoder = Conv1DEncoder(in_features=5, hidden_dim=8, num_layers=3, kernel_size=5).eval()
    x = torch.randn(2, 9, 5)
    mask = torch.tensor([[1] * 9, [1] * 4 + [0] * 5]).bool()
    with torch.no_grad():
        base = encoder(x, mask)
        dirty = x.clone()
        dirty[1, 4:] = float("nan")
        dirty[1, 6] = float("inf")
        out = encoder(dirty, mask)
        alone = encoder(x[1:, :4], mask[1:, :4])
    torch.testing.assert_close(out.tokens, base.tokens, atol=ATOL, rtol=0)
    torch.testing.assert_close(alone.pooled[0], base.pooled[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(alone.tokens[0], base.tokens[1, :4], atol=ATOL, rtol=0)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv1d_even_kernel() -> None:
    encoder = Conv1DEncoder(in_features=3, hidden_dim=8, num_layers=1, kernel_size=4)
    out = encoder(torch.randn(2, 7, 3))
    assert out.tokens.shape == (2, 7, 8) and out.mask.all()


def test_frame_encoder_sample_without_frames() -> None:
    """A clip with no real frame (modality absent) gives zeros, not NaN, and others are unaffected."""
    torch.manual_seed(0)
    for name in ("video/frame_attention", "video/frame_mean", "video/conv1d"):
        encoder = build(name).eval()
        video = make_case(name).inputs["pixel_values_videos"]
        mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
        with torch.no_grad():
            out = encoder(pixel_values_videos=video, video_attention_mask=mask)
            first = encoder(pixel_values_videos=video[:1], video_attention_mask=mask[:1])
        assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
        assert (out.pooled[1] == 0).all() and (out.tokens[1] == 0).all()
        torch.testing.assert_close(out.pooled[0], first.pooled[0], atol=ATOL, rtol=0)


def test_frame_encoder_skips_padded_frames() -> None:
    """Padded frames are never passed to the frame tower."""
    seen: list[int] = []
    encoder = build("video/frame_mean").eval()
    encoder.frame_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["pixel_values"].shape[0]), with_kwargs=True
    )
    case = make_case("video/frame_mean")
    with torch.no_grad():
        encoder(**case.padded)
    assert seen == [int(case.padded["video_attention_mask"].sum())]


def test_frame_encoder_accepts_any_image_encoder() -> None:
    """The frame tower is any module with output_dim and forward(pixel_values) -> EncoderOutput."""
    frame_tower = build("image/siglip")
    encoder = FrameEncoder(
        frame_encoder=frame_tower, temporal="attention", num_heads=4, max_frames=8, output_dim=12
    )
    out = encoder(pixel_values_videos=torch.randn(2, 3, 3, 16, 16))
    assert out.tokens.shape == (2, 3, 12) and encoder.output_dim == 12

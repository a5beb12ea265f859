"""Every shipped encoder YAML: builds, forward shapes, no NaN, backward, padding invariance.

Mask properties per architecture:

- video / text / conv1d audio / HuBERT / wav2vec2 (``feat_extract_norm: layer``): appending padded
  (garbage-filled) frames, tokens or samples leaves real tokens and ``pooled`` unchanged.
- image: no padding exists; the mask is all ``True`` and a sample's output does not depend on the
  rest of the batch.
- whisper: a fixed 2 * max_source_positions-frame window with no attention mask, so padded frames
  inside the window *do* influence real tokens (as in the released models). What holds, and is
  tested: the output mask is the frame mask downsampled by 2, ``pooled`` is the mean over exactly
  those tokens, and samples are independent of each other.
"""

from __future__ import annotations

import pytest
import torch

from mmtrain.components.encoders.base import masked_mean

from ._helpers import (
    ATOL,
    assert_valid_output,
    build,
    encoder_yamls,
    make_case,
    params_without_gradient,
    random_loss,
    resolved_node,
)

#: Encoders whose library does not import beside the CPU torch wheel (open_clip needs a torchvision built for the
#: installed torch); what runs without it is tested in test_open_clip_image.py.
NEEDS_GPU_STACK = ["image/open_clip"]
YAMLS = [name for name in encoder_yamls() if name not in NEEDS_GPU_STACK]

# Every trainable parameter gets a finite, non-zero gradient. Notes: Whisper's sinusoidal
# embed_positions is frozen by transformers (requires_grad=False), so it is not checked; HuBERT /
# wav2vec2's masked_spec_embed is only used by SpecAugment in training mode, which the tiny YAMLs
# keep on (mask_time_prob 0.05, at least 2 masked spans), so it does get a gradient here.


def test_expected_yamls_are_shipped() -> None:
    assert encoder_yamls() == sorted([*YAMLS, *NEEDS_GPU_STACK])
    assert YAMLS == [
        "audio/conv1d", "audio/hubert", "audio/wav2vec2", "audio/whisper",
        "image/clip", "image/siglip", "image/vit",
        "text/bert", "text/llm_embeddings", "text/minilm",
        "video/conv1d", "video/frame_attention", "video/frame_mean",
    ]  # fmt: skip


@pytest.mark.parametrize("name", YAMLS)
def test_forward_shapes_and_no_nan(name: str) -> None:
    torch.manual_seed(0)
    encoder = build(name).eval()
    case = make_case(name)
    with torch.no_grad():
        out = encoder(**case.inputs)
    assert_valid_output(out, batch=2, dim=encoder.output_dim)
    assert torch.isfinite(out.tokens).all() and torch.isfinite(out.pooled).all()
    if name.startswith(("text/", "video/")):
        first_mask = next(v for k, v in case.inputs.items() if "mask" in k)
        assert torch.equal(out.mask, first_mask.bool())


@pytest.mark.parametrize("name", [n for n in YAMLS if n != "text/minilm" and "output_dim" in resolved_node(n)])
def test_output_dim_projection(name: str) -> None:
    """``output_dim`` (where the class has it; conv encoders set width by hidden_dim) projects."""
    encoder = build(name, output_dim=24).eval()
    with torch.no_grad():
        out = encoder(**make_case(name).inputs)
    assert encoder.output_dim == 24
    assert_valid_output(out, batch=2, dim=24)


@pytest.mark.parametrize("name", [n for n in YAMLS if n != "text/minilm"])
def test_backward_reaches_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    encoder = build(name).train()
    out = encoder(**make_case(name).inputs)
    random_loss(out).backward()
    assert params_without_gradient(encoder) == []


def test_backward_minilm_real_weights() -> None:
    """The real MiniLM tower also trains end to end (its unused BERT pooler is not built)."""
    encoder = build("text/minilm").train()
    out = encoder(**make_case("text/minilm").inputs)
    random_loss(out).backward()
    assert params_without_gradient(encoder) == []


@pytest.mark.parametrize("name", [n for n in YAMLS if make_case(n).padded is not None])
def test_padding_does_not_change_real_outputs(name: str) -> None:
    torch.manual_seed(0)
    encoder = build(name).eval()
    case = make_case(name)
    assert case.padded is not None
    with torch.no_grad():
        base = encoder(**case.inputs)
        padded = encoder(**case.padded)
    n = base.tokens.shape[1]
    assert torch.equal(padded.mask[:, :n], base.mask)
    assert not padded.mask[:, n:].any()
    torch.testing.assert_close(padded.tokens[:, :n][base.mask], base.tokens[base.mask], atol=ATOL, rtol=0)
    torch.testing.assert_close(padded.pooled, base.pooled, atol=ATOL, rtol=0)
    assert (padded.tokens[~padded.mask] == 0).all()


@pytest.mark.parametrize("name", [n for n in YAMLS if make_case(n).padded is None])
def test_unpaddable_encoders_keep_samples_independent(name: str) -> None:
    """Image and Whisper encoders: the property they do have (see the module docstring)."""
    torch.manual_seed(0)
    encoder = build(name).eval()
    case = make_case(name)
    with torch.no_grad():
        both = encoder(**case.inputs)
        first = encoder(**{k: v[:1] for k, v in case.inputs.items()})
    torch.testing.assert_close(first.tokens[0], both.tokens[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(first.pooled[0], both.pooled[0], atol=ATOL, rtol=0)
    if name.startswith("image/"):
        assert both.mask.all()
    else:
        frame_mask = case.inputs["audio_attention_mask"].bool()
        assert torch.equal(both.mask, frame_mask[:, ::2])
        assert both.mask.sum(-1).tolist() == [50, 30]
        torch.testing.assert_close(both.pooled, masked_mean(both.tokens, both.mask), atol=ATOL, rtol=0)


def test_yamls_use_processor_interpolations_and_no_injected_args() -> None:
    """Sizes owned by the data processor are interpolations; no fusion/head-only arguments."""
    from omegaconf import OmegaConf

    from ._helpers import encoder_config_dir

    interpolated = {
        "image_size": "${data.processor.image_size}",
        "num_mel_bins": "${data.processor.num_mel_bins}",
        "audio_frames": "${data.processor.audio_frames}",
    }

    def walk(node: object) -> None:
        if isinstance(node, dict):
            assert "input_dims" not in node and "num_labels" not in node
            for key, value in node.items():
                if key in interpolated:
                    assert value == interpolated[key], key
                if key in ("num_channels", "in_channels"):
                    assert value == 3
                walk(value)

    for name in YAMLS:
        raw = OmegaConf.to_container(OmegaConf.load(encoder_config_dir() / f"{name}.yaml"), resolve=False)
        walk(raw)

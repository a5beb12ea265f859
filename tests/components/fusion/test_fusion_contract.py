"""Contract tests run against every shipped multimodal fusion YAML."""

from __future__ import annotations

import copy
import inspect

import hydra.utils
import pytest
import torch
from omegaconf import OmegaConf

from mmtrain.components.encoders.base import EncoderOutput

MULTIMODAL = ["concat", "gated", "cross_attention", "bottleneck", "perceiver"]
MODALITIES = ("video", "audio", "text")


def real_tokens(out: EncoderOutput) -> list[torch.Tensor]:
    """Per sample, the output tokens at real positions (order kept) ``[n_b, D]``."""
    return [out.tokens[b][out.mask[b]] for b in range(out.tokens.shape[0])]


def assert_same(a: EncoderOutput, b: EncoderOutput, samples: list[int] | None = None) -> None:
    samples = list(range(a.pooled.shape[0])) if samples is None else samples
    ta, tb = real_tokens(a), real_tokens(b)
    for s in samples:
        torch.testing.assert_close(a.pooled[s], b.pooled[s], atol=1e-5, rtol=0)
        assert ta[s].shape == tb[s].shape
        torch.testing.assert_close(ta[s], tb[s], atol=1e-5, rtol=0)


def assert_finite(out: EncoderOutput) -> None:
    assert torch.isfinite(out.tokens).all()
    assert torch.isfinite(out.pooled).all()


def test_every_shipped_yaml_is_tested_and_binds_to_its_signature(config_dir) -> None:
    names = sorted(p.stem for p in config_dir.glob("*.yaml"))
    assert names == sorted([*MULTIMODAL, "identity"])
    for name in names:
        cfg = OmegaConf.to_container(OmegaConf.load(config_dir / f"{name}.yaml"))
        target = hydra.utils.get_class(cfg.pop("_target_"))
        params = inspect.signature(target.__init__).parameters
        assert "input_dims" not in cfg, f"{name}.yaml must not set the injected input_dims"
        assert set(cfg) <= set(params), f"{name}.yaml has keys {set(cfg) - set(params)}"
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in params.items() if n != "self")


@pytest.mark.parametrize("name", MULTIMODAL)
def test_shapes_and_output_dim(name: str, build, make_inputs) -> None:
    fusion = build(name).eval()
    assert fusion.output_dim == 32
    for batch in (3, 1):
        out = fusion(make_inputs(batch))
        assert out.pooled.shape == (batch, fusion.output_dim)
        assert out.tokens.shape[0] == batch and out.tokens.shape[2] == fusion.output_dim
        assert out.mask.shape == out.tokens.shape[:2] and out.mask.dtype == torch.bool
        assert_finite(out)
    expected_tokens = {"bottleneck": 4, "perceiver": 8, "gated": 3, "concat": 18, "cross_attention": 18}
    assert out.tokens.shape[1] == expected_tokens[name]


@pytest.mark.parametrize("name", MULTIMODAL)
def test_a_loss_on_pooled_alone_reaches_every_parameter(name: str, build, make_inputs) -> None:
    """A classification or regression head reads ``pooled`` only: no parameter may sit on a path to
    ``tokens`` alone (the gradient audit would report it as never trained)."""
    torch.manual_seed(0)
    fusion = build(name).train()
    out = fusion(make_inputs(3))
    (out.pooled * torch.randn_like(out.pooled)).sum().backward()
    unused = [pname for pname, param in fusion.named_parameters() if param.grad is None or not param.grad.abs().sum() > 0]
    assert not unused, f"{name}: parameters no pooled-only loss reaches: {unused}"


@pytest.mark.parametrize("name", MULTIMODAL)
def test_backward_gives_finite_gradients_to_every_parameter(name: str, build, make_inputs) -> None:
    torch.manual_seed(0)
    fusion = build(name).train()
    inputs = make_inputs(3)
    out = fusion(inputs)
    weights = torch.randn_like(out.tokens)
    loss = (out.pooled * torch.randn_like(out.pooled)).sum() + (out.tokens * weights)[out.mask].sum()
    loss.backward()
    for pname, param in fusion.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient for {pname}"
    total = sum(p.grad.abs().sum() for p in fusion.parameters())
    assert total > 0


@pytest.mark.parametrize("name", MULTIMODAL)
def test_padded_tokens_do_not_change_outputs(name: str, build, make_inputs) -> None:
    fusion = build(name).eval()
    inputs = make_inputs(3)
    extra = 4
    for modality in MODALITIES:
        padded = dict(inputs)
        src = inputs[modality]
        junk = torch.randn(3, extra, src.tokens.shape[2]) * 1e4
        padded[modality] = EncoderOutput(
            tokens=torch.cat([src.tokens, junk], dim=1),
            mask=torch.cat([src.mask, torch.zeros(3, extra, dtype=torch.bool)], dim=1),
            pooled=src.pooled,
        )
        with torch.no_grad():
            assert_same(fusion(inputs), fusion(padded))


@pytest.mark.parametrize("name", MULTIMODAL)
def test_absent_modality_is_finite_and_ignored(name: str, build, make_inputs) -> None:
    fusion = build(name).eval()
    inputs = make_inputs(3)
    absent = inputs["audio"]
    absent_mask = absent.mask.clone()
    absent_mask[0] = False
    inputs["audio"] = EncoderOutput(tokens=absent.tokens, mask=absent_mask, pooled=absent.pooled)
    changed = dict(inputs)
    tokens, pooled = absent.tokens.clone(), absent.pooled.clone()
    tokens[0] = torch.randn_like(tokens[0]) * 1e3
    pooled[0] = torch.randn_like(pooled[0]) * 1e3
    changed["audio"] = EncoderOutput(tokens=tokens, mask=absent_mask, pooled=pooled)
    with torch.no_grad():
        out, out_changed = fusion(inputs), fusion(changed)
    assert_finite(out)
    assert_same(out, out_changed, samples=[0])
    # ...while the same change to a sample where audio is present does change that sample.
    tokens[1] = torch.randn_like(tokens[1])
    pooled[1] = torch.randn_like(pooled[1])
    with torch.no_grad():
        out_present = fusion({**changed, "audio": EncoderOutput(tokens, absent_mask, pooled)})
    assert not torch.allclose(out.pooled[1], out_present.pooled[1], atol=1e-4)


@pytest.mark.parametrize("name", MULTIMODAL)
def test_all_modalities_absent_gives_finite_output_and_gradients(name: str, build, make_inputs) -> None:
    fusion = build(name).train()
    inputs = {
        m: EncoderOutput(
            tokens=o.tokens,
            mask=torch.cat([torch.zeros_like(o.mask[:1]), o.mask[1:]]),
            pooled=o.pooled,
        )
        for m, o in make_inputs(2).items()
    }
    out = fusion(inputs)
    assert_finite(out)
    (out.pooled.sum() + out.tokens[out.mask].sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", MULTIMODAL)
def test_zero_length_modality_is_finite(name: str, build, make_inputs) -> None:
    fusion = build(name).train()
    inputs = make_inputs(2)
    inputs["audio"] = EncoderOutput(
        tokens=torch.randn(2, 0, 16), mask=torch.zeros(2, 0, dtype=torch.bool), pooled=torch.zeros(2, 16)
    )
    out = fusion(inputs)
    assert_finite(out)
    (out.pooled.sum() + out.tokens[out.mask].sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in fusion.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", MULTIMODAL)
def test_changing_lengths_across_calls_matches_fresh_module(name: str, build, make_inputs) -> None:
    fusion = build(name).eval()
    fresh = copy.deepcopy(fusion)
    shapes = [
        {"video": 5, "audio": 7, "text": 6},
        {"video": 2, "audio": 11, "text": 3},
        {"video": 9, "audio": 1, "text": 6},
    ]
    batches = [make_inputs(b, s, seed=i) for i, (b, s) in enumerate(zip((3, 2, 4), shapes))]
    with torch.no_grad():
        outs = [fusion(x) for x in batches]
        again = fusion(batches[0])
        for x, out in zip(batches, outs):
            assert_same(copy.deepcopy(fresh)(x), out)
    assert_same(again, outs[0])


@pytest.mark.parametrize("name", MULTIMODAL)
def test_input_errors_name_the_modality(name: str, build, make_inputs) -> None:
    fusion = build(name)
    inputs = make_inputs(2)
    with pytest.raises(ValueError, match="'image'"):
        fusion({**inputs, "image": inputs["text"]})
    with pytest.raises(ValueError, match="'audio'.*missing"):
        fusion({k: v for k, v in inputs.items() if k != "audio"})
    wrong = EncoderOutput(
        tokens=torch.randn(2, 7, 20), mask=torch.ones(2, 7, dtype=torch.bool), pooled=torch.randn(2, 20)
    )
    with pytest.raises(ValueError, match="'audio'.*20"):
        fusion({**inputs, "audio": wrong})
    video = inputs["video"]
    bad_mask = EncoderOutput(tokens=video.tokens, mask=video.mask[:, :3], pooled=video.pooled)
    with pytest.raises(ValueError, match="'video'.*mask"):
        fusion({**inputs, "video": bad_mask})


@pytest.mark.parametrize("name", MULTIMODAL)
def test_modality_order_does_not_matter(name: str, build, make_inputs) -> None:
    torch.manual_seed(0)
    a = build(name, {"video": 24, "audio": 16, "text": 32}).eval()
    b = build(name, {"text": 32, "audio": 16, "video": 24}).eval()
    b.load_state_dict(a.state_dict())
    inputs = make_inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(a(inputs).pooled, b(dict(reversed(inputs.items()))).pooled)


@pytest.mark.parametrize("name", ["concat", "gated", "bottleneck", "perceiver"])
def test_single_modality_works(name: str, build, make_inputs) -> None:
    fusion = build(name, {"audio": 16}).eval()
    out = fusion(make_inputs(2, names=["audio"]))
    assert out.pooled.shape == (2, 32)
    assert_finite(out)

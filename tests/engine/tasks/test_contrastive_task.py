"""ContrastiveTask: mean-over-pairs InfoNCE against a hand computation, pairs, match groups."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from mmtrain.components.losses.contrastive import SymmetricInfoNCE
from mmtrain.components.losses.matryoshka import MatryoshkaLoss
from mmtrain.models.contrastive import ContrastiveModel
from mmtrain.models.contrastive import build_contrastive_model
from mmtrain.engine.tasks.contrastive import ContrastiveTask

ENCODERS = {
    "image": {"_target_": "mmtrain.components.encoders.hf_image.HFImageEncoder", "model_type": "vit", "config": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 16, "patch_size": 8}},
    "text": {"_target_": "mmtrain.components.encoders.hf_text.HFTextEncoder", "model_type": "bert", "config": {
        "vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2}},
    "audio": {"_target_": "mmtrain.components.encoders.audio_conv1d.AudioConv1DEncoder", "num_mel_bins": 80, "hidden_dim": 24,
              "num_layers": 1},
}
PROJECTION = {"_target_": "mmtrain.components.heads.projection.ProjectionHead", "output_dim": 16, "matryoshka_dims": [8, 4]}


def tiny_model() -> ContrastiveModel:
    torch.manual_seed(0)
    return build_contrastive_model(encoders=ENCODERS, projection=PROJECTION, id2label={},
                                   allowed_target_prefixes=["mmtrain."])


def tiny_batch(size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {"pixel_values": torch.randn(size, 3, 16, 16), "input_ids": torch.randint(100, 2000, (size, 6)),
            "attention_mask": torch.ones(size, 6, dtype=torch.long), "input_features": torch.randn(size, 80, 100)}


def make_task(**kwargs) -> ContrastiveTask:
    return ContrastiveTask(model=tiny_model(), optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
                           label_names=[], **kwargs)


def info_nce(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / t
    targets = torch.arange(a.shape[0])
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def test_loss_is_mean_over_pairs_on_samples_with_both_modalities() -> None:
    task = make_task(loss=functools.partial(SymmetricInfoNCE, init_temperature=0.1))
    assert task.pairs == [("image", "text"), ("image", "audio"), ("text", "audio")]
    torch.manual_seed(0)
    emb = {n: torch.randn(5, 16) for n in ("image", "text", "audio")}
    present = {"image": torch.ones(5, dtype=torch.bool), "text": torch.tensor([1, 1, 0, 1, 1]).bool(),
               "audio": torch.tensor([1, 0, 1, 1, 0]).bool()}
    losses = task.pair_losses(emb, present)
    it, ia = present["text"], present["audio"]
    ta = present["text"] & present["audio"]
    hand = {"image_text": info_nce(emb["image"][it], emb["text"][it], 0.1),
            "image_audio": info_nce(emb["image"][ia], emb["audio"][ia], 0.1),
            "text_audio": info_nce(emb["text"][ta], emb["audio"][ta], 0.1)}
    assert set(losses) == set(hand)
    for name in hand:
        assert torch.allclose(losses[name], hand[name], atol=1e-6), name
    mean = torch.stack(list(losses.values())).mean()
    assert torch.allclose(mean, torch.stack(list(hand.values())).mean(), atol=1e-6)
    # a pair with fewer than two samples having both modalities is left out
    present["audio"] = torch.tensor([1, 0, 0, 0, 0]).bool()
    assert set(task.pair_losses(emb, present)) == {"image_text"}


def test_each_pair_has_its_own_temperature_and_it_trains() -> None:
    module = SymmetricInfoNCE(init_temperature=0.2)
    task = make_task(loss=module, pairs=[["image", "text"], ["audio", "text"]])
    temps = [task.losses[n].log_temperature for n in ("image_text", "audio_text")]
    assert temps[0] is not temps[1] and temps[0] is not module.log_temperature
    groups = task.optimizer_groups()
    assert groups[-1]["weight_decay"] == 0.0 and {id(p) for p in groups[-1]["params"]} == {id(t) for t in temps}


def test_matryoshka_wraps_each_pair_with_projection_dims() -> None:
    task = make_task(matryoshka={"dims": None, "mode": "sample"}, pairs=[["image", "text"]])
    assert isinstance(task.losses["image_text"], MatryoshkaLoss)
    assert task.losses["image_text"].dims == [16, 8, 4] and task.eval_dims == [8, 4]
    with pytest.raises(ValueError, match="task.matryoshka.dims"):
        make_task(matryoshka={"dims": [32]})


@pytest.mark.parametrize(("pairs", "message"), [([["image", "video"]], "task.pairs"), ([["image", "image"]], "task.pairs"),
                                                ([["image", "text"], ["text", "image"]], "twice")])
def test_bad_pairs_name_the_key(pairs, message) -> None:
    with pytest.raises(ValueError, match=message):
        make_task(pairs=pairs)
    with pytest.raises(ValueError, match="task.match_by"):
        make_task(match_by="caption")


def test_match_groups_and_split_results() -> None:
    task = make_task(match_by="text", ks=[5])
    batch = tiny_batch(6)
    batch["input_ids"][3] = batch["input_ids"][0]
    batch["attention_mask"][3] = batch["attention_mask"][0]
    batch["text_present"] = torch.tensor([True, True, True, True, True, False])
    batch["ids"] = [f"s{i}" for i in range(6)]
    keys = task.group_keys(batch, torch.arange(6) + 100)
    assert keys[0] == keys[3] and len(set(keys.tolist())) == 5 and keys[5] == 105
    with torch.no_grad():
        record = task._record(batch, task(batch))
    task._collected["val"] = [record]
    result = task.split_results(task.gathered("val"), "val")
    assert task.ks == [1, 5]
    assert {"r@1_image_text", "r@1_text_image", "r@5_audio_text@8", "r@1_mean", "chance_r@1", "n"} <= set(result)
    assert result["n"] == 6.0 and result["n_image_text"] == 5.0
    r1 = [result[f"r@1_{q}_{g}"] for a, b in task.pairs for q, g in ((a, b), (b, a))]
    assert result["r@1_mean"] == pytest.approx(sum(r1) / len(r1))
    with pytest.raises(ValueError, match="match_by=label"):
        make_task(match_by="label").group_keys(batch, torch.arange(6))

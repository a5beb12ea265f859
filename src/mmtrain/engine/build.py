"""Build data, model, task, callbacks and loggers from a validated config."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, open_dict

from mmtrain.components.metrics.sense import lower_is_better
from mmtrain.config.instantiate import safe_instantiate
from mmtrain.config.targets import locate_allowed
from mmtrain.models.base import MultimodalPreTrainedModel
from mmtrain.models.processing import MultimodalProcessor, model_inputs


def build_data(cfg: DictConfig, prefixes: tuple[str, ...]) -> Any:
    """Run ``data.prepare`` (e.g. build the demo set on first use), then build the datamodule; with
    ``shards.source`` set, every split is read from those packed shards instead (:func:`from_shards`)."""
    data_cfg = cfg.data.copy()
    if (cfg.get("shards") or {}).get("source"):
        data_cfg = from_shards(data_cfg, cfg.shards)
    prepare_node = data_cfg.get("prepare")
    if prepare_node is not None:
        safe_instantiate(prepare_node, prefixes, config_key="data.prepare")
    with open_dict(data_cfg):
        data_cfg.pop("prepare", None)
    extra = {}
    target = locate_allowed(str(data_cfg._target_), prefixes, "data")
    if "seed" in inspect.signature(target).parameters and "seed" not in data_cfg:
        extra["seed"] = int(cfg.seed)  # the train order and augmentation derive from the run seed
    return safe_instantiate(data_cfg, prefixes, config_key="data", **extra)


def from_shards(data_cfg: DictConfig, shards: DictConfig) -> DictConfig:
    """``data_cfg`` with its train / val / test datasets replaced by the same splits of the packed shards at
    ``shards.source`` (what ``mmtrain data pack`` wrote from them); processor, batch size and workers stay, and
    ``data.prepare`` is dropped (the source files are not needed)."""
    from omegaconf import OmegaConf

    with open_dict(data_cfg):
        data_cfg.pop("prepare", None)
        for split in ("train", "val", "test"):
            node = data_cfg.get(split)
            if node is None:
                continue
            raw = OmegaConf.to_container(node, resolve=False)
            if "sources" in raw:
                raise ValueError(f"shards.source reads data.{split} from one packed folder, but data.{split} is a "
                                 "mixture: give its sources as ShardsDataset nodes instead")
            data_cfg[split] = {"_target_": "mmtrain.data.formats.shards.ShardsDataset", "source": shards.source,
                               "split": split, "storage_options": shards.get("storage_options") or {},
                               "modalities": raw.get("modalities", "${data.processor.modalities}"),
                               "num_frames": raw.get("num_frames", 8)}
    return data_cfg


def build_model(
    cfg: DictConfig,
    label_names: Sequence[str],
    prefixes: Sequence[str],
    *,
    warm_start: bool = True,
    facts: Mapping[str, Any] | None = None,
) -> MultimodalPreTrainedModel:
    """The model from ``cfg.model`` with the class count from ``label_names``.

    ``facts``: what the processor's prompt tells an LLM-decoder model (token count and marker ids,
    :meth:`MultimodalProcessor.model_facts`). ``model.init`` (components started from an earlier
    run, see :mod:`mmtrain.engine.warm_start`) is applied when ``warm_start``; rebuilding a
    trained model (export, eval) skips it.
    """
    model_cfg = cfg.model.copy()
    with open_dict(model_cfg):
        init = model_cfg.pop("init", None)
        levers = {key: model_cfg.pop(key, None) for key in ("gradient_checkpointing", "attn_implementation")}
    facts = dict(facts or {})
    if facts:
        target = locate_allowed(str(model_cfg._target_), prefixes, "model")
        unknown = sorted(set(facts) - set(inspect.signature(target).parameters))
        if unknown:
            raise ValueError(
                f"data.processor.prompt is set, but model ({model_cfg._target_}) takes no prompt; "
                "use model=llm for an LLM decoder, or remove data.processor.prompt."
            )
    model = safe_instantiate(
        model_cfg, prefixes, config_key="model", id2label=dict(enumerate(label_names)),
        allowed_target_prefixes=list(prefixes), **facts,
    )
    if warm_start and init:
        from mmtrain.engine.warm_start import load_components

        load_components(model, init)
    if any(levers.values()):  # memory levers: gradient checkpointing, the attention kernel
        from mmtrain.engine.memory import apply_memory_levers

        apply_memory_levers(model, gradient_checkpointing=bool(levers["gradient_checkpointing"]),
                            attn_implementation=levers["attn_implementation"])
    return model


def wire_processor(processor: MultimodalProcessor, model: MultimodalPreTrainedModel) -> None:
    """Make the processor emit what the model's encoders take (waveform vs log-mel audio)."""
    facts = processor.model_facts() if hasattr(processor, "model_facts") else {}
    for key, value in facts.items():
        stored = getattr(model.config, key, None)
        if stored is not None and stored != value:
            raise ValueError(
                f"the processor's prompt gives {key}={value} but the model was built with {stored}; "
                "use the processor saved with the model (its tokenizer holds the marker tokens)."
            )
    accepted = model.expected_inputs()
    if "input_values" in accepted and "input_features" not in accepted:
        processor.audio_format = "waveform"
    elif "input_features" in accepted:
        processor.audio_format = "log_mel"


def build_task(
    cfg: DictConfig, prefixes: Sequence[str], model: MultimodalPreTrainedModel, label_names: Sequence[str],
    processor: MultimodalProcessor,
) -> pl.LightningModule:
    """The task from ``cfg.task`` around ``model``; a task that writes or reads text (generation) also
    gets the processor's ``prompt`` builder."""
    target = locate_allowed(str(cfg.task._target_), prefixes, "task")
    extra = {}
    if "prompt" in inspect.signature(target).parameters:
        if getattr(processor, "prompt_builder", None) is None:
            raise ValueError(f"task {cfg.task._target_} needs an LM prompt: set data.processor.prompt (and model=llm).")
        extra["prompt"] = processor.prompt_builder
    return safe_instantiate(cfg.task, prefixes, config_key="task", model=model, label_names=list(label_names),
                            **extra)


def token_budget(datamodule: Any, model: MultimodalPreTrainedModel) -> dict[str, Any]:
    """With an LM prompt, check every sample's tokens before training (:mod:`mmtrain.components.lm.budget`);
    returns the per-split report ({} without a prompt)."""
    builder = getattr(datamodule.processor, "prompt_builder", None)
    if builder is None or not hasattr(builder, "lengths"):  # a VLM's image tokens are counted per batch instead
        return {}
    from mmtrain.components.lm.budget import check_token_budget, lm_positions

    decoder = getattr(model, "decoder", None)
    positions = lm_positions(decoder.lm.config) if decoder is not None else None
    return check_token_budget(builder, datamodule.splits, positions)


def build_callbacks(cfg: DictConfig, prefixes: Sequence[str],
                    monitored: tuple[str, str] | None = None) -> list[pl.Callback]:
    """Every non-null entry of ``cfg.callbacks``; ``monitor: auto`` (the best checkpoint, early stopping)
    becomes ``monitored`` (``(monitor, mode)``, the task's :meth:`~mmtrain.engine.tasks.base.TaskBase.monitored`)."""
    from omegaconf import OmegaConf

    built = []
    for key, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        if node.get("monitor") == "auto":
            if monitored is None:
                raise ValueError(f"callbacks.{key}.monitor is 'auto', but no task says what to monitor: "
                                 f"set callbacks.{key}.monitor=val/<metric> and mode=max|min.")
            node = OmegaConf.merge(node, {"monitor": monitored[0], "mode": monitored[1]})
        elif node.get("mode") == "auto":  # a metric named by hand: its sense from the task, else its name
            monitor = str(node.get("monitor"))
            by_name = "min" if lower_is_better(monitor) else "max"
            mode = monitored[1] if monitored is not None and monitor == monitored[0] else by_name
            node = OmegaConf.merge(node, {"mode": mode})
        built.append(safe_instantiate(node, prefixes, config_key=f"callbacks.{key}"))
    return built


#: Lightning loggers whose package is an optional extra of mmtrain: target -> (module, extra).
LOGGER_EXTRAS = {
    "lightning.pytorch.loggers.WandbLogger": ("wandb", "wandb"),
    "lightning.pytorch.loggers.MLFlowLogger": ("mlflow", "mlflow"),
}


def check_logger_extras(cfg: DictConfig) -> None:
    """Refuse, before anything is built, a logger whose package is not installed, naming the extra (the
    package is looked up, not imported)."""
    import importlib.util

    from mmtrain.config.compose import ConfigError

    for key, node in (cfg.get("logger") or {}).items():
        needed = LOGGER_EXTRAS.get(str((node or {}).get("_target_", "")))
        if needed is None:
            continue
        try:
            found = importlib.util.find_spec(needed[0]) is not None
        except ValueError:  # in sys.modules as None: its import is blocked
            found = False
        if not found:
            raise ConfigError(f"logger.{key} ({node['_target_']}) needs the {needed[0]} package, which is not "
                              f"installed: pip install 'mmtrain[{needed[1]}]' (or choose another logger, "
                              f"e.g. logger=tensorboard).")


def build_loggers(cfg: DictConfig, prefixes: Sequence[str]) -> list[Any]:
    """Every non-null entry of ``cfg.logger``; all but TensorBoard get the resolved config as params.

    TensorBoard is left out: the run's ``config.yaml`` lies next to its events, and its hparams would
    add an ``hp_metric`` curve. A W&B run that an earlier ``train`` in this process left open (a
    stage, a fold) is finished first, or Lightning's ``WandbLogger`` would log into it.
    """
    import sys

    from lightning.pytorch.loggers import TensorBoardLogger
    from omegaconf import OmegaConf

    wandb = sys.modules.get("wandb")  # only if a config's target imported it: never imported here
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
    nodes = (cfg.get("logger") or {}).items()
    loggers = [safe_instantiate(n, prefixes, config_key=f"logger.{k}") for k, n in nodes if n is not None]
    params = None
    for logger in loggers:
        if not isinstance(logger, TensorBoardLogger):
            params = params or OmegaConf.to_container(cfg, resolve=True)
            logger.log_hyperparams(params)
    return loggers


def check_model_fits_data(model: MultimodalPreTrainedModel, processor: MultimodalProcessor, dataset: Any) -> None:
    """Run two real samples through each part before training; name the part that does not fit.

    Raises:
        ValueError: ``model.encoders.<slot>``, ``model.fusion``, ``model.head`` (or the kind's own
            part) cannot take what the part before it (or the processor) produces.
    """
    samples = first_samples(dataset, 2)
    if not samples:
        raise ValueError("data.train has no decodable sample to train on (see skipped.jsonl for why).")
    batch = model_inputs(processor.collate(samples))
    labels = batch.pop("labels", None)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.check_batch(batch)
    finally:
        model.train(was_training)
    num_labels = int(getattr(model.config, "num_labels", 0) or 0)
    if labels is not None and num_labels and int(labels.max()) >= num_labels:
        raise ValueError(f"a label id {int(labels.max())} is outside the {num_labels} classes.")


def first_samples(dataset: Any, count: int, tries: int = 64) -> list[dict[str, Any]]:
    """Up to ``count`` decodable samples from the start of a map-style or streamed dataset."""
    from itertools import islice

    from mmtrain.data.skips import SkippedSample

    if isinstance(dataset, torch.utils.data.IterableDataset):
        candidates = islice(iter(dataset), tries)
    else:
        candidates = (dataset[i] for i in range(min(len(dataset), tries)))
    return list(islice((s for s in candidates if not isinstance(s, SkippedSample)), count))

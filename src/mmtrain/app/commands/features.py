"""``mmtrain features [overrides] --out DIR``: frozen encoders' features over whole splits, into shards.

With the same overrides as the ``mmtrain train`` run that will read them, encodes each split with every
frozen encoder slot the feature cache would cache (``model.trainable.<slot>=false``; not train batches
that ``data.processor.augment`` or ``modality_dropout`` change) and writes the entries into shards under
``DIR/<slot>/<key>/<split>/`` (:mod:`mmtrain.data.feature_shards`): the cache's keys, so a run with
``feature_cache.shards=DIR`` reads them only when its weights, preprocessing, data config, device type,
precision and torch version are these, and leaves those media undecoded.

Batches are the split in dataset order at ``data.batch_size`` on ``trainer.accelerator`` under
``trainer.precision`` (one device). ``--part K/N`` encodes the K-th of N contiguous blocks (one process
per GPU; the parts' shards share the folders). Interrupted, the same command goes on after the last
shard it finished; samples whose media cannot be decoded are listed in ``DIR/skipped.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def add_cli(subparsers: argparse._SubParsersAction, composes: Any) -> argparse.ArgumentParser:
    """Register ``features``; ``composes`` adds the config arguments (overrides, ``--config-dir``)."""
    parser = subparsers.add_parser("features", help="encode frozen slots over whole splits into feature shards",
                                   description=__doc__.splitlines()[0])
    from mmtrain.app.commands.data_pack import add_shard_arguments

    composes(parser)
    add_shard_arguments(parser, "output folder (train with feature_cache.shards=<out>)")
    parser.add_argument("--slots", default=None, help="comma-separated encoder slots (default: every cacheable one)")
    parser.add_argument("--part", default="0/1", help="K/N: encode the K-th of N blocks of each split (default: all)")
    parser.set_defaults(func=run)
    return parser


def parse_part(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``."""
    try:
        part, parts = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--part {text!r}: give K/N, e.g. 0/4 (the first of 4 blocks)") from None
    if not 0 <= part < parts:
        raise ValueError(f"--part {text!r}: K must be in 0..N-1")
    return part, parts


def compute_features(cfg: Any, *, out: Path, shard_bytes: int, splits: list[str] | None = None,
                     slots: list[str] | None = None, part: int = 0, parts: int = 1,
                     progress: Any = None) -> dict[str, Any]:
    """Encode the composed config's splits into feature shards under ``out``; returns what was written."""
    import lightning.pytorch as pl

    from mmtrain.app.commands.train import check_strategy, data_specs, prepare
    from mmtrain.engine.build import build_data, build_model, wire_processor
    from mmtrain.models.feature_cache import FeatureCache

    began = time.perf_counter()
    cfg, prefixes = prepare(cfg)
    check_strategy(cfg.trainer)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule = build_data(cfg, prefixes)
    chosen = splits or list(datamodule.splits)
    unknown = [s for s in chosen if s not in datamodule.splits]
    if unknown:  # before the model is built
        raise ValueError(f"--splits {unknown}: the config has splits {list(datamodule.splits)}")
    model = build_model(cfg, datamodule.label_names, prefixes, facts=datamodule.processor.model_facts())
    wire_processor(datamodule.processor, model)
    cache = FeatureCache(out, model, datamodule.processor, data_specs(cfg, datamodule.splits))
    unknown = [s for s in slots or () if s not in model.encoders]
    if unknown:
        raise ValueError(f"--slots {unknown}: the model's encoder slots are {list(model.encoders)}")
    trainer = pl.Trainer(accelerator=cfg.trainer.get("accelerator") or "auto", devices=1,
                         precision=cfg.trainer.get("precision"), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    device = trainer.strategy.root_device
    model.eval()
    for slot in slots or model.encoders:  # only the encoders run (an LLM beside them stays where it was built)
        model.encoders[slot] = trainer.precision_plugin.convert_module(model.encoders[slot]).to(device)
    results: dict[str, Any] = {"device": str(device), "precision": str(trainer.precision), "part": f"{part}/{parts}",
                               "splits": {}}
    for split in chosen:
        wanted = [s for s in cache.cached_slots(split) if slots is None or s in slots]
        refused = {s: cache.reasons[(split, s)] for s in slots or () if (split, s) in cache.reasons}
        if refused:
            raise ValueError(f"features of {split}: slot(s) not cacheable: "
                             + "; ".join(f"{s}: {why}" for s, why in refused.items())
                             + f"; leave {split} out (--splits) or make the slot frozen and its batches fixed")
        if not wanted:
            results["splits"][split] = {"slots": {}, "note": "; ".join(
                f"{s}: {cache.reasons[(split, s)]}" for s in model.encoders)}
            continue
        results["splits"][split] = encode_split(
            split, datamodule, model, cache, trainer, wanted, out=out, shard_bytes=shard_bytes, part=part,
            parts=parts, progress=progress)
    results["seconds"] = round(time.perf_counter() - began, 2)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"features-part{part:03d}of{parts:03d}.json").write_text(json.dumps(results, indent=2))
    return results


def encode_split(split: str, datamodule: Any, model: Any, cache: Any, trainer: Any, slots: list[str], *, out: Path,
                 shard_bytes: int, part: int, parts: int, progress: Any = None) -> dict[str, Any]:
    """One split's shards (each slot's entries, batch by batch as a training run's val pass makes them)."""
    import torch
    import torch.utils.data
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from torch.utils.data import DataLoader, Subset

    from mmtrain.data.feature_shards import FeatureShardWriter
    from mmtrain.data.transport import WorkerPacked
    from mmtrain.models.feature_rows import row_ids, split_rows

    device = trainer.strategy.root_device
    with trainer.precision_plugin.forward_context():
        keys = {slot: cache.slot_key(slot, split, device) for slot in slots}  # as the training steps compute them
    dataset = datamodule.splits[split]
    if isinstance(dataset, torch.utils.data.IterableDataset) or hasattr(dataset, "at_epoch"):
        kind = "a mixture" if hasattr(dataset, "at_epoch") else "a stream"
        raise ValueError(f"features of {split}: data.{split} is {kind} (its samples are not at fixed positions); "
                         "compute features of map-style sources: the files, a datasets folder with streaming=false, "
                         "or packed shards (mmtrain data pack)")
    total, size = len(dataset), datamodule.batch_size
    batches = -(-total // size)  # parts of whole batches: each batch is the one a single-process val pass makes
    lo, hi = (min(total, batches * k // parts * size) for k in (part, part + 1))
    writer = FeatureShardWriter({slot: cache.entry_dir(slot, split, key) for slot, key in keys.items()},
                                part=part, parts=parts, shard_bytes=shard_bytes,
                                facts={"batch_size": datamodule.batch_size, "first": lo, "end": hi})
    resumed = writer.resume()
    position = resumed if resumed is not None else lo
    loader = DataLoader(Subset(dataset, range(position, hi)), batch_size=datamodule.batch_size, shuffle=False,
                        num_workers=datamodule.num_workers, collate_fn=WorkerPacked(datamodule.processor.collate))
    skipped = 0
    with torch.no_grad():
        for batch in loader:
            start = position
            position += len(batch["ids"]) + len(batch["skipped"])
            if batch["skipped"]:
                skipped += len(batch["skipped"])
                with open(out / "skipped.jsonl", "a") as ledger:
                    ledger.writelines(json.dumps({"split": split, **r}) + "\n" for r in batch["skipped"])
            rows: dict[str, list[tuple[str, Any]]] = {}
            if batch["ids"]:
                batch = move_data_to_device(batch, device)
                with trainer.precision_plugin.forward_context():
                    for slot in slots:
                        inputs = model.slot_inputs(slot, batch)
                        ids, input_length = row_ids(inputs, batch["ids"])
                        if not inputs or ids is None:
                            raise ValueError(f"features of {split}: a batch has no input for slot '{slot}' "
                                             f"(ids {batch['ids'][:3]}...)")
                        rows[slot] = list(zip(ids, split_rows(model.encoders[slot](**inputs), input_length)))
            writer.add(rows, start=start, end=position)
            if progress is not None:
                progress(split, position - lo, hi - lo)
    writer.flush(position)
    return {"slots": {slot: {"key": key, "folder": str(cache.entry_dir(slot, split, key))} for slot, key in keys.items()},
            "samples": position - lo, "skipped": skipped, "continued_from": resumed, **writer.written}


def run(args: argparse.Namespace) -> int:
    """Encode, print a table per split; returns the exit code."""
    from rich.console import Console
    from rich.table import Table

    from mmtrain.config.compose import compose_config
    from mmtrain.app.commands.data_pack import comma_list
    from mmtrain.core.progress import split_bars
    from mmtrain.data.shards.pack import parse_size

    console = Console()
    shard_bytes = parse_size(args.shard_size)
    part, parts = parse_part(args.part)
    cfg = compose_config(args.overrides, config_dir=args.config_dir)
    out = Path(args.out)
    with split_bars(console, lambda split: f"encoding {split}") as progress:
        results = compute_features(cfg, out=out, shard_bytes=shard_bytes, splits=comma_list(args.splits),
                                   slots=comma_list(args.slots), part=part, parts=parts, progress=progress)
    table = Table(title=f"features in {out} ({results['device']}, precision {results['precision']})")
    for column in ("split", "slots", "samples", "skipped", "shards", "MB"):
        table.add_column(column, justify="left" if column in ("split", "slots") else "right")
    for split, r in results["splits"].items():
        if not r["slots"]:
            table.add_row(split, f"none ({r['note']})", "", "", "", "")
            continue
        note = f" (continued at sample {r['continued_from']})" if r["continued_from"] else ""
        table.add_row(split + note, ", ".join(r["slots"]), str(r["samples"]), str(r["skipped"]), str(r["shards"]),
                      f"{r['bytes'] / 1e6:.1f}")
    console.print(table)
    console.print(f"train with them: mmtrain train <the same overrides> feature_cache.shards={out}", soft_wrap=True)
    return 0

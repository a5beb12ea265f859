"""Frozen-encoder feature cache: later epochs read encoder outputs from disk instead of running them.

A frozen encoder slot (``model.trainable.<slot>=false``: no gradients, eval mode) maps the same
input to the same output in every epoch; when its input is also deterministic (no train-time
augmentation or modality dropout touching it), its output per sample can be stored once and read
back. :class:`FeatureCache` does that inside :meth:`MultimodalPreTrainedModel.encode_one`:

* **Key.** A slot's outputs live in ``<root>/<slot>/<key>/<split>/<blake2b(sample id)>.safetensors``,
  where ``key`` hashes the format version, the slot's weights (blake2b over every tensor of its
  ``state_dict``: name, dtype, shape, bytes), the encoder's config spec, the processor settings of
  the slot's modality (image size, frame count, normalisation, audio features, tokenizer...),
  the split's data config, the device type, autocast state and the torch version
  (:mod:`mmtrain.models.feature_keys`). Anything that
  changes an output changes the key, so a stale entry is never read (invalidation by construction);
  old keys are simply left on disk (delete ``<root>`` to reclaim the space).
* **Eligibility.** Only frozen slots are cached. For the train split a slot is not cached when the
  processor augments its modality (``data.processor.augment`` for image/video) or drops it
  (``data.processor.modality_dropout``): such batches differ every epoch. Val/test collation is
  deterministic, so every frozen slot is cached there. Which slots are cached, and why the others
  are not, is logged once.
* **Entries.** Per sample, unpadded: ``tokens`` [n, D] and ``mask`` [n] (the encoder's output up to
  its last real token), ``pooled`` [D], in the encoder's output dtype (no precision loss); the
  sample id is stored in the metadata and checked on read (:mod:`mmtrain.data.feature_entries`).
  Files are written to a temporary name and ``os.replace``-d into place, so DDP ranks writing the
  same entry never expose a partial file. Loads go through ``safetensors`` only (no pickle).
* **Before decoding.** The datamodule wraps each split's dataset in
  :class:`~mmtrain.data.cached_features.CachedFeatureDataset` with this cache's :meth:`plan` (entry
  folders and keys, computed here in the main process under the trainer's device and precision).
  A sample whose cached slots all have entries does not decode the media of those slots (a
  dataset with ``load(index, modalities)``; others decode and drop them), the collate does not
  preprocess it, and the entries travel in the batch (``batch["cached_features"]``, read in the
  DataLoader workers) as its ``cached_features`` entry, an input of the model's ``forward`` like any
  other (:meth:`MultimodalPreTrainedModel.encode_one` hands it to :meth:`encode`), with the split and
  sample ids the entries belong to. Which media are served this way is logged once per split.
* **Batches.** Rows with an entry (shipped in the batch, else read from disk) are assembled from it
  (padded with zeros and ``mask=False`` to the length the encoder would have produced). When some
  rows have none (first epoch, a new sample, a run killed while writing a batch's entries), the
  encoder runs on the batch at its full shape (rows whose media were served are zero inputs: a
  sub-batch of the missing rows would change kernel shapes and with them the last float bits), only
  the missing rows' outputs are kept and written, and the batch is returned *as re-assembled from
  the stored values*. A cold-cache run, a warm one and one that resumes between the two therefore
  see bit-identical features. Presence (``<m>_present``) is applied after the cache, as without it.

Tolerance: stored features are the same floats the encoder produced. Real-token features and
``pooled`` are bit-identical to an uncached forward of the same batch; only padded positions (which
every masked consumer ignores) hold zeros instead of the encoder's values at padding. Across epochs
an uncached run re-pads text to the new batch's longest sample, which can move the last float bits
of an attention encoder's outputs (~1e-7), so metrics of a cached and an uncached run agree to
~1e-5 relative (val logits within 1e-4), while two cached runs are identical.

Precomputed: ``mmtrain features`` (:mod:`mmtrain.app.commands.features`) encodes whole splits offline into
shards at the same paths and keys (:mod:`mmtrain.data.feature_shards`); with ``feature_cache.shards`` set,
entries are looked up there first, then in the per-sample files, and a key with no shards is logged with
the keys that are there.

The cache draws no random numbers and needs no state in checkpoints, so resumable training
(:mod:`mmtrain.data.resumable`) is unaffected, and the train dataset's fingerprint is that of the
unwrapped dataset. A batch without ``cached_features`` (pre-flight checks, export, inference, a split
without cached slots) runs the encoders as usual: from files to loss, a batch takes one path, the
cached entries being one of its inputs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmtrain.data.cached_features import (
    SERVABLE,
    CachedBatch,
    CachePlan,
    can_skip_decoding,
)
from mmtrain.components.encoders.base import EncoderOutput
from mmtrain.data.feature_entries import entry_name, unpack, write_entry
from mmtrain.data.feature_shards import FeatureShards, lookup_entry
from mmtrain.models.feature_rows import assemble, finish, row_ids, split_rows
from mmtrain.models.feature_keys import (
    digest,
    preprocessing_settings,
    tensor_versions,
    weights_hash,
)

log = logging.getLogger(__name__)

#: Bump when the entry layout or key recipe changes: every old entry becomes a miss.
FORMAT_VERSION = 2  # 2: each entry carries a checksum of its tensors
SPLITS = ("train", "val", "test")
#: Modalities whose train-time batches ``data.processor.augment`` changes.
AUGMENTED_MODALITIES = ("image", "video")


def train_randomness(processor: Any, modality: str) -> str | None:
    """Why train batches of ``modality`` differ between epochs (so cannot be cached), or ``None``."""
    reasons = []
    augment = getattr(processor, "augment", None)
    if modality in AUGMENTED_MODALITIES and augment:
        reasons.append(f"data.processor.augment ({', '.join(sorted(augment))})")
    dropout = (getattr(processor, "modality_dropout", None) or {}).get(modality, 0.0)
    if dropout > 0:
        reasons.append(f"data.processor.modality_dropout.{modality}={dropout}")
    return " and ".join(reasons) or None


@dataclass
class CacheStats:
    """Per ``(split, slot)`` sample counts: ``hits`` read from the cache (in the batch or from disk),
    ``misses`` encoded, ``writes`` stored."""

    hits: dict[tuple[str, str], int] = field(default_factory=dict)
    misses: dict[tuple[str, str], int] = field(default_factory=dict)
    writes: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, table: dict[tuple[str, str], int], split: str, slot: str, count: int) -> None:
        if count:
            table[(split, slot)] = table.get((split, slot), 0) + count

    def total(self, name: str) -> int:
        return sum(getattr(self, name).values())


class FeatureCache:
    """On-disk cache of frozen encoders' outputs; see the module docstring.

    Args:
        root: cache folder (e.g. ``<data_root>/.feature_cache``).
        model: the model whose frozen slots are cached (its ``feature_cache`` attribute is set by
            :meth:`attach`).
        processor: the data processor (its settings are part of the keys).
        data_specs: per split, the data config that produced its samples (hashed into the keys;
            e.g. the resolved ``data.<split>`` node).
        shards: a folder ``mmtrain features`` wrote (:mod:`mmtrain.data.feature_shards`): entries are read
            from its shards first, at the same keys.
    """

    def __init__(self, root: str | Path, model: Any, processor: Any,
                 data_specs: Mapping[str, Any] | None = None, shards: str | Path | None = None) -> None:
        from mmtrain.models.base import modality_of

        self.root = Path(root)
        self.shards_root = Path(shards) if shards else None
        self._stores: dict[tuple[str, str, str], FeatureShards | None] = {}
        self.model = model
        self.processor = processor
        self.data_specs = {str(k): v for k, v in (data_specs or {}).items()}
        self.stats = CacheStats()
        self._weights: dict[str, tuple[Any, list[torch.nn.Module], list[Any], str]] = {}
        self._logged: set[str] = set()
        self.reasons: dict[tuple[str, str], str] = {}  # (split, slot) -> why it is not cached
        for slot in model.encoders:
            modality = modality_of(slot)
            for split in SPLITS:
                if slot not in model.frozen:
                    self.reasons[(split, slot)] = "trainable (model.trainable)"
                elif split == "train" and (why := train_randomness(processor, modality)):
                    self.reasons[(split, slot)] = f"train batches are random: {why}"

    # -- wiring -------------------------------------------------------------------------------

    def attach(self) -> "FeatureCache":
        """Make ``model.encode_one`` consult this cache; logs the cached and uncached slots."""
        self.model.feature_cache = self
        for split in SPLITS:
            cached = self.cached_slots(split)
            skipped = [f"{s} ({self.reasons[(split, s)]})" for s in self.model.encoders if (split, s) in self.reasons]
            log.info("feature cache %s: cached slots %s; not cached: %s", split, cached or "none",
                     "; ".join(skipped) or "none")
        return self

    def cached_slots(self, split: str) -> list[str]:
        return [s for s in self.model.encoders if (split, s) not in self.reasons]

    def plan(self, split: str, trainer: Any = None, dataset: Any = None) -> CachePlan | None:
        """What ``split``'s dataset reads before decoding, under ``trainer``'s device and precision
        (the keys its steps will compute; CPU without autocast when ``None``); ``None`` when no slot
        of the split is cached."""
        from mmtrain.models.base import modality_of

        slots = self.cached_slots(split)
        if not slots:
            return None
        device = torch.device(trainer.strategy.root_device) if trainer is not None else torch.device("cpu")
        with trainer.precision_plugin.forward_context() if trainer is not None else contextlib.nullcontext():
            keys = {slot: self.slot_key(slot, split, device) for slot in slots}  # as the steps will compute them
        served = {}
        for modality in SERVABLE:
            of_modality = tuple(s for s in self.model.encoders if modality_of(s) == modality)
            if of_modality and all(s in keys for s in of_modality):
                served[modality] = of_modality
        skip = dataset is not None and can_skip_decoding(dataset)
        if split not in self._logged:
            self._logged.add(split)
            how = ("not decoded" if skip else
                   f"decoded (a {type(dataset).__name__} decodes all or nothing), not preprocessed")
            log.info("feature cache %s: media of %s served before decoding for samples with entries (%s)",
                     split, ", ".join(served) or "no modality", how)
        used = tuple(getattr(self.processor, "modalities", ()) or ()) or None
        stores = {slot: store for slot, key in keys.items() if (store := self.store(slot, split, key)) is not None}
        return CachePlan(split, {slot: (str(self.entry_dir(slot, split, key)), key) for slot, key in keys.items()},
                         served, skip, used, stores)

    def store(self, slot: str, split: str, key: str) -> FeatureShards | None:
        """The precomputed shards of ``slot``'s entries for ``split`` at ``key`` (``None``: none given, or none
        at this key: logged once, with the keys that are there)."""
        if self.shards_root is None:
            return None
        if (slot, split, key) not in self._stores:
            folder = self.shards_root / slot / key / split
            store = FeatureShards(folder) if folder.is_dir() else None
            if store is not None:
                log.info("feature shards: %s %s reads %d precomputed entries from %s", split, slot, len(store), folder)
            else:
                others = sorted(p.parent.name for p in self.shards_root.glob(f"{slot}/*/{split}"))
                log.warning("feature shards: %s holds no %s features of slot '%s' at this run's key %s%s; they are "
                            "encoded instead. The key covers the slot's weights, preprocessing, the split's data "
                            "config, device type, precision and torch version: compute them with the run's own "
                            "overrides (mmtrain features ...)", self.shards_root, split, slot, key,
                            f" (it has keys {others})" if others else "")
            self._stores[(slot, split, key)] = store
        return self._stores[(slot, split, key)]

    # -- keys ---------------------------------------------------------------------------------

    def weights_key(self, slot: str) -> str:
        """The slot's weight hash, recomputed only when one of its tensors changed (checked every batch)."""
        encoder = self.model.encoders[slot]
        known = self._weights.get(slot)
        if known is not None and known[0] is encoder and tensor_versions(known[1]) == known[2]:
            return known[3]
        modules = list(encoder.modules())
        known = (encoder, modules, tensor_versions(modules), weights_hash(encoder))
        self._weights[slot] = known
        return known[3]

    def slot_key(self, slot: str, split: str, device: torch.device) -> str:
        """The key of ``slot``'s entries for ``split``: every fact that can change its outputs."""
        from mmtrain.models.base import modality_of

        spec = (self.model.config.encoders or {}).get(slot)
        autocast = (torch.is_autocast_enabled(device.type),
                    str(torch.get_autocast_dtype(device.type)) if torch.is_autocast_enabled(device.type) else None)
        return digest(FORMAT_VERSION, self.weights_key(slot), spec,
                      preprocessing_settings(self.processor, modality_of(slot)),
                      split, self.data_specs.get(split), device.type, autocast, torch.__version__)

    def entry_dir(self, slot: str, split: str, key: str) -> Path:
        return self.root / slot / key / split

    entry_name = staticmethod(entry_name)

    # -- encode -------------------------------------------------------------------------------

    @staticmethod
    def served(slot: str, cached: CachedBatch) -> bool:
        """Whether ``cached`` holds ``slot``'s features for every row (its input may be absent)."""
        packed = cached.packed.get(slot)
        return packed is not None and all(packed["has"])

    def encode(self, slot: str, run: Callable[[], EncoderOutput], inputs: Mapping[str, Any],
               cached: CachedBatch) -> EncoderOutput:
        """``slot``'s raw output (before presence) for a batch, from the cache where possible.

        ``run()`` runs the encoder on the batch's ``inputs``; it runs only when a row has no entry.
        ``cached``: the batch's ``cached_features`` (its split, sample ids and the entries read with it).
        """
        split = cached.split
        if (split, slot) in self.reasons or slot not in self.model.frozen:
            self._check_not_served(slot, "the slot is not cached for this batch", cached)
            return run()
        ids, input_length = row_ids(inputs, cached.ids)
        if ids is None:
            return run()
        rows = len(ids)
        # entries shipped in the batch are per sample: with items flattened into rows (pairs) they are read here
        provided: CachedBatch | None = cached if rows == len(cached.ids) else None
        first = next((v for v in inputs.values() if isinstance(v, torch.Tensor)), None)
        device = first.device if first is not None else self.model.device
        key = self.slot_key(slot, split, device)
        packed = provided.packed.get(slot) if provided is not None else None
        if packed is not None and provided.keys.get(slot) != key:  # type: ignore[union-attr]
            self._check_not_served(slot, "its entries were read under another key (weights, device or precision "
                                         "changed since the data loader started)", cached)
            packed = None
        if packed is not None and all(packed["has"]):
            self.stats.add(self.stats.hits, split, slot, rows)
            return finish(packed, input_length, device)
        folder = self.entry_dir(slot, split, key)
        entries = unpack(packed) if packed is not None else [None] * rows
        store = self.store(slot, split, key)
        entries = [e if e is not None else lookup_entry(i, folder, store) for e, i in zip(entries, ids)]
        missing = [b for b, e in enumerate(entries) if e is None]
        self.stats.add(self.stats.hits, split, slot, rows - len(missing))
        if missing:
            if first is None:  # every row's media were served, yet an entry is missing: nothing to encode
                self._check_not_served(slot, f"{len(missing)} row(s) have no entry", cached)
            self.stats.add(self.stats.misses, split, slot, len(missing))
            # At the batch's shape (rows served from the cache are zero inputs): the missing rows come
            # out bit-identical to a cold run's, which a sub-batch of them would not (kernels vary by shape).
            fresh = split_rows(run(), input_length)
            folder.mkdir(parents=True, exist_ok=True)
            for b, entry in ((b, fresh[b]) for b in missing):
                write_entry(folder / entry_name(ids[b]), ids[b], slot, key, FORMAT_VERSION, entry)
                entries[b] = entry
            self.stats.add(self.stats.writes, split, slot, len(missing))
        return assemble(entries, input_length, device)  # type: ignore[arg-type]

    @staticmethod
    def _check_not_served(slot: str, why: str, cached: CachedBatch) -> None:
        """Refuse to go on when ``slot``'s media were left undecoded but its cached features cannot be used."""
        from mmtrain.models.base import modality_of

        if any(cached.served.get(modality_of(slot), ())):
            raise RuntimeError(
                f"feature cache: the batch's {modality_of(slot)} media were not decoded (served from the cache), "
                f"but slot '{slot}' cannot use its cached features: {why}. Turn feature_cache.enabled off, or "
                "keep frozen encoders' weights fixed during fit."
            )

    def summary(self) -> dict[str, Any]:
        """Per ``split/slot`` sample counts (hits: read, misses: encoded, writes: stored) and in total."""
        def table(t: dict[tuple[str, str], int]) -> dict[str, int]:
            return {f"{split}/{slot}": n for (split, slot), n in sorted(t.items())}
        return {"hits": table(self.stats.hits), "misses": table(self.stats.misses),
                "writes": table(self.stats.writes),
                "cached_slots": {split: self.cached_slots(split) for split in SPLITS}}


def setup_feature_cache(settings: Mapping[str, Any] | None, model: Any, datamodule: Any,
                        data_specs: Mapping[str, Any] | None = None) -> FeatureCache | None:
    """From the ``feature_cache`` config node: the cache, attached to ``model``, or ``None`` when off.

    Also hands the cache to ``datamodule`` (its ``feature_cache``), whose loaders then serve cached
    slots before decoding and put the entries in each batch. ``settings``: ``{enabled: bool, dir: path,
    shards: path | None}``; a ``shards`` folder (written by ``mmtrain features``) turns the cache on by itself.
    """
    if not settings or not (settings.get("enabled") or settings.get("shards")):
        return None
    if not getattr(model, "frozen", None):
        log.info("feature_cache.enabled, but no encoder is frozen (model.trainable.<slot>=false): nothing to cache")
        return None
    cache = FeatureCache(settings["dir"], model, datamodule.processor, data_specs, settings.get("shards")).attach()
    if hasattr(datamodule, "feature_cache"):
        datamodule.feature_cache = cache
    return cache


def log_summary(cache: FeatureCache) -> None:
    """One log line: samples read from, encoded for and stored in ``cache`` so far."""
    s = cache.stats
    log.info("feature cache: %d samples read, %d encoded, %d stored (%s)", s.total("hits"), s.total("misses"),
             s.total("writes"), cache.root)

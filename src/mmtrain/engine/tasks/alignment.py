"""Pairwise alignment of encoder slots inside a task: per-pair losses over the (global) batch, Recall@K over
whole splits. A mixin of :class:`~mmtrain.engine.tasks.contrastive.ContrastiveTask` (alignment alone) and
:class:`~mmtrain.engine.tasks.align_generate.AlignGenerateTask` (alignment beside an LM loss).

Training: for every configured slot pair ``(a, b)`` the pair's own loss (default
:class:`~mmtrain.components.losses.contrastive.SymmetricInfoNCE`, so each pair learns its own temperature)
runs on the samples that have both modalities. Under DDP (``gather_negatives``, the default) the
embeddings of every rank's batch are gathered first, with gradients (:func:`gather_rows`), so the
in-batch negatives are those of the global batch: two processes with ``batch_size=B`` train like one
with ``2B`` (CLIP's recipe), not like two independent batches of ``B``.

``loss_scope``: ``global`` (every rank builds the whole ``[B*W, B*W]`` logit matrix of the global batch and
computes the same loss) or ``local`` (each rank scores only its own rows as queries against the gathered
gallery, ``[B, B*W]``, and its loss is its share of the global one; open_clip's ``local_loss``, the option
that scales with the number of ranks). Both give every parameter the gradient of one process holding the
global batch.

Evaluation: the embeddings of the WHOLE val/test split are collected (and, under DDP, gathered from
every rank with ``LightningModule.all_gather``, so each rank scores the full set), then Recall@K is
computed in both directions for every evaluated pair and every Matryoshka width. Retrieval
positives follow ``match_by``.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Sequence
from itertools import combinations
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from mmtrain.components.losses.contrastive import SymmetricInfoNCE
from mmtrain.components.metrics.retrieval import retrieval_metrics
from mmtrain.components.metrics.retrieval_examples import retrieval_examples, write_retrieval_examples

MATCH_RULES = ("id", "text", "label")
LOSS_SCOPES = ("global", "local")
LossSpec = nn.Module | Callable[[], nn.Module] | None


def stable_key(data: bytes) -> int:
    """A process-independent signed 64-bit hash (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


class PairAlignment:
    """Mixin of a :class:`~mmtrain.engine.tasks.base.TaskBase` whose model returns per-slot ``embeddings`` /
    ``present`` and has ``encoders``, ``embedding_dim`` and ``matryoshka_dims``. Call
    :meth:`setup_pairs` in ``__init__``; the task's ``step`` records val/test batches with :meth:`_record` and
    its ``_finish`` scores them with :meth:`finish_retrieval`. See the module docstring."""

    def setup_pairs(self, model: nn.Module, *, loss: LossSpec, pairs: Sequence[Sequence[str]] | None,
                    eval_pairs: Sequence[Sequence[str]] | None, match_by: str, ks: Sequence[int],
                    gather_negatives: bool, loss_scope: str = "global") -> None:
        """Check the settings and build one loss per trained pair (``self.losses``).

        Args:
            loss: the loss of ONE slot pair, ``loss(a [B,E], b [B,E]) -> scalar``: a ``_partial_`` factory
                (called once per pair) or a module (deep-copied per pair); default ``SymmetricInfoNCE()``.
            pairs: slot pairs ``[[a, b], ...]`` to train; default every pair of the model's slots.
            eval_pairs: slot pairs scored at val/test; default ``pairs``.
            match_by: retrieval positives: ``id`` (only the sample's own partner), ``text`` (samples with
                identical text ``input_ids`` are interchangeable) or ``label`` (same class).
            ks: Recall cut-offs (1 is always added: ``r@1_mean`` is the monitored summary).
            gather_negatives: under DDP, the train loss on the embeddings of all ranks' batches.
            loss_scope: ``global`` or ``local`` (see the module docstring; only matters under DDP with
                ``gather_negatives``).
        """
        slots = list(model.encoders)
        self.pairs = self._check_pairs(pairs, slots, "task.pairs")
        self.eval_pairs = self._check_pairs(eval_pairs, slots, "task.eval_pairs") if eval_pairs else list(self.pairs)
        if match_by not in MATCH_RULES:
            raise ValueError(f"task.match_by must be one of {list(MATCH_RULES)}, got {match_by!r}.")
        self.match_by = match_by
        if any(int(k) <= 0 for k in ks):
            raise ValueError(f"task.ks must be positive integers, got {list(ks)}.")
        self.ks = sorted({int(k) for k in ks} | {1})
        self.gather_negatives = bool(gather_negatives)
        if loss_scope not in LOSS_SCOPES:
            raise ValueError(f"task.loss_scope must be one of {list(LOSS_SCOPES)}, got {loss_scope!r}.")
        self.loss_scope = loss_scope
        width = int(model.embedding_dim)
        self.eval_dims = [d for d in model.matryoshka_dims if d < width]
        self.losses = nn.ModuleDict({self.pair_name(a, b): self._make_loss(loss) for a, b in self.pairs})
        self._collected: dict[str, list[dict[str, torch.Tensor]]] = {"val": [], "test": []}
        self.id_names: dict[int, str] = {}  # uid -> sample id, for the report's retrieval examples

    def check_dims(self, dims: Sequence[int], key: str) -> list[int]:
        """``dims`` as ints, each in ``1..E``; the nested ones below ``E`` join the evaluated widths."""
        width = int(self.model.embedding_dim)
        dims = [int(d) for d in dims]
        bad = [d for d in dims if not 0 < d <= width]
        if bad:
            raise ValueError(f"{key} {bad} lie outside 1..{width} (the projection's output_dim).")
        self.eval_dims = sorted({d for d in dims if d < width} | set(self.eval_dims), reverse=True)
        return dims

    # -- construction helpers ---------------------------------------------------------------------

    @staticmethod
    def pair_name(a: str, b: str) -> str:
        return f"{a}_{b}"

    @staticmethod
    def _check_pairs(pairs: Sequence[Sequence[str]] | None, slots: list[str], key: str) -> list[tuple[str, str]]:
        if pairs is None:
            return list(combinations(slots, 2))
        out: list[tuple[str, str]] = []
        for pair in pairs:
            if len(pair) != 2 or pair[0] == pair[1] or any(s not in slots for s in pair):
                raise ValueError(f"{key}: {list(pair)} is not a pair of two different encoder slots of the model "
                                 f"({slots}); write e.g. [[image, text]].")
            if tuple(pair) in out or tuple(reversed(pair)) in out:
                raise ValueError(f"{key}: {list(pair)} is listed twice.")
            out.append((str(pair[0]), str(pair[1])))
        if not out:
            raise ValueError(f"{key} is empty; list at least one slot pair, e.g. [[image, text]].")
        return out

    @staticmethod
    def _make_loss(loss: LossSpec) -> nn.Module:
        if loss is None:
            return SymmetricInfoNCE()
        if isinstance(loss, nn.Module):
            return copy.deepcopy(loss)
        built = loss()
        if not isinstance(built, nn.Module):
            raise ValueError(f"task.loss must build an nn.Module (set _partial_: true), got {type(built).__name__}.")
        return built

    def optimizer_groups(self) -> list[dict[str, Any]]:
        groups = super().optimizer_groups()
        extra = [p for p in self.losses.parameters() if p.requires_grad]
        return groups + ([{"params": extra, "weight_decay": 0.0}] if extra else [])

    def pair_losses(self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor],
                    losses: nn.ModuleDict | None = None, mine: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss of each pair on its samples with both modalities (pairs with < 2 such samples left out).

        Args:
            embeddings: slot -> [B, E]; present: slot -> [B] bool.
            losses: pair name -> loss module; default ``self.losses``.
            mine: ``[B]`` bool, this rank's rows of a gathered batch (``loss_scope: local``, from
                :meth:`global_batch`): each pair's loss is then this rank's share of it, times the world size
                (so that DDP's mean over ranks is the global loss).
        """
        losses = self.losses if losses is None else losses
        out = {}
        for a, b in self.pairs:
            rows = present[a] & present[b]
            if int(rows.sum()) < 2:
                continue
            loss = losses[self.pair_name(a, b)]
            if mine is None:
                out[self.pair_name(a, b)] = loss(embeddings[a][rows], embeddings[b][rows])
            else:
                queries = torch.nonzero(mine[rows]).flatten()
                out[self.pair_name(a, b)] = self._world() * loss(embeddings[a][rows], embeddings[b][rows],
                                                                 queries=queries)
        return out

    def _world(self) -> int:
        trainer = self._trainer  # None outside a Trainer (unit tests): one process
        return int(trainer.world_size) if trainer is not None else 1

    def global_batch(self, embeddings: dict[str, torch.Tensor], present: dict[str, torch.Tensor]
                     ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor | None]:
        """The train batch of every rank (rank order), embeddings with gradients, and with ``loss_scope: local``
        the ``[B_global]`` bool mask of this rank's rows (else ``None``); unchanged in one process or with
        ``gather_negatives=False``. A collective: every rank calls it once per train step."""
        if not self.gather_negatives or self._world() <= 1:
            return embeddings, present, None
        slots = list(self.model.encoders)  # the same slots, in the same order, on every rank
        local = next(iter(embeddings.values()))
        rows, width = local.shape[0], int(self.model.embedding_dim)
        absent = torch.zeros(rows, width, device=local.device)
        count = torch.tensor([rows], device=local.device)
        counts = [int(c) for c in self.all_gather(count).reshape(-1).tolist()]
        flags = torch.stack([present[n] if n in present else torch.zeros(rows, dtype=torch.bool, device=local.device)
                             for n in slots], dim=1).to(torch.uint8)  # gloo gathers no bool
        flags = gather_rows(flags, counts).bool()
        gathered = {n: gather_rows(embeddings.get(n, absent).float(), counts) for n in slots}
        mine = None
        if self.loss_scope == "local":
            start = sum(counts[: self.global_rank])
            mine = torch.zeros(sum(counts), dtype=torch.bool, device=local.device)
            mine[start: start + rows] = True
        return gathered, {n: flags[:, i] for i, n in enumerate(slots)}, mine

    def empty_batch_loss(self) -> torch.Tensor:
        """Under DDP with ``gather_negatives``, a rank whose batch was all skipped still joins the
        gather (with no rows) and computes the global loss, so its collectives match the other ranks'."""
        loss = super().empty_batch_loss()
        if not self.gather_negatives or self._world() <= 1:
            return loss
        width = int(self.model.embedding_dim)
        embeddings = {n: torch.zeros(0, width, device=self.device, requires_grad=True) for n in self.model.encoders}
        present = {n: torch.zeros(0, dtype=torch.bool, device=self.device) for n in self.model.encoders}
        return loss + self.train_loss(embeddings, present)

    def _record(self, batch: dict[str, Any], output: Any) -> dict[str, torch.Tensor]:
        """Per-sample tensors kept for the split-level retrieval: embeddings, presence, keys."""
        record = {f"emb/{n}": e.detach().float() for n, e in output.embeddings.items()}
        record.update({f"present/{n}": p.detach() for n, p in output.present.items()})
        device = next(iter(output.embeddings.values())).device
        record["uid"] = torch.tensor([stable_key(str(i).encode()) for i in batch["ids"]], device=device)
        self.id_names.update(zip(record["uid"].tolist(), map(str, batch["ids"])))
        record["group"] = self.group_keys(batch, record["uid"])
        return record

    def group_keys(self, batch: dict[str, Any], uid: torch.Tensor) -> torch.Tensor:
        """``[B]`` int64 match-group key of each sample under ``match_by``."""
        if self.match_by == "id":
            return uid
        if self.match_by == "label":
            if batch.get("labels") is None:
                raise ValueError("task.match_by=label needs labelled data (no labels in the batch); give the data's "
                                 "label_key and label_names, or use match_by: text or id.")
            return batch["labels"].to(device=uid.device, dtype=torch.long)
        if batch.get("input_ids") is None:
            raise ValueError("task.match_by=text needs a text slot (input_ids in the batch); use match_by: id or label.")
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        present = batch.get("text_present")
        keys = []
        for row in range(ids.shape[0]):
            if present is not None and not bool(present[row]):
                keys.append(int(uid[row]))  # no text: its own group
                continue
            tokens = ids[row] if mask is None else ids[row][mask[row].bool()]
            keys.append(stable_key(b"text:" + tokens.cpu().numpy().astype("int64").tobytes()))
        return torch.tensor(keys, device=uid.device)

    # -- split-level evaluation --------------------------------------------------------------------

    def gathered(self, split: str) -> dict[str, torch.Tensor]:
        """The split's records concatenated, from every rank under DDP (on CPU).

        Under DDP each rank holds its shard; shards may differ in length (skipped samples), so the
        local counts are gathered first and every shard padded to the longest before ``all_gather``.
        ``DistributedSampler`` pads the split by repeating samples so all ranks get equal shards;
        those repeats are dropped by sample id (first occurrence kept), so the result is exactly
        the split. With one process nothing is gathered or dropped.
        """
        records = self._collected[split]
        self._collected[split] = []
        if records:
            local = {k: torch.cat([r[k] for r in records]) for k in records[0]}
        else:  # a rank without batches still joins the collectives
            local = self._empty_record()
        trainer = self._trainer  # None outside a Trainer (unit tests): one process
        world = int(trainer.world_size) if trainer is not None else 1
        if world == 1:
            return {k: v.cpu() for k, v in local.items()}
        count = torch.tensor([local["uid"].shape[0]], device=self.device)
        counts = self.all_gather(count).reshape(-1).tolist()
        longest = max(int(c) for c in counts)
        out: dict[str, torch.Tensor] = {}
        for key, value in local.items():
            flag = value.dtype == torch.bool  # gloo gathers no bool tensors
            value = value.to(self.device, torch.uint8 if flag else value.dtype)
            padded = value.new_zeros((longest, *value.shape[1:]))
            padded[: value.shape[0]] = value
            stacked = self.all_gather(padded).reshape(world, longest, *value.shape[1:])
            joined = torch.cat([stacked[r, : int(counts[r])] for r in range(world)]).cpu()
            out[key] = joined.bool() if flag else joined
        seen: set[int] = set()
        keep = []
        for index, uid in enumerate(out["uid"].tolist()):
            keep.append(uid not in seen)
            seen.add(uid)
        mask = torch.tensor(keep, dtype=torch.bool)
        return {k: v[mask] for k, v in out.items()}

    def _empty_record(self) -> dict[str, torch.Tensor]:
        width = int(self.model.embedding_dim)
        record = {f"emb/{n}": torch.zeros(0, width, device=self.device) for n in self.model.encoders}
        record.update({f"present/{n}": torch.zeros(0, dtype=torch.bool, device=self.device) for n in self.model.encoders})
        record["uid"] = torch.zeros(0, dtype=torch.long, device=self.device)
        record["group"] = torch.zeros(0, dtype=torch.long, device=self.device)
        return record

    def split_results(self, data: dict[str, torch.Tensor], split: str) -> dict[str, float]:
        """Recall@K (both directions, every eval pair and Matryoshka width), chance levels, ``r@1_mean``.

        Keys have no split prefix (``r@1_image_text``, ``r@5_text_image@32``, ``chance_r@1_image_text``,
        ``n_image_text``...); they are logged as ``<split>/<key>``.
        """
        embeddings = {n: data[f"emb/{n}"] for n in self.model.encoders}
        present = {n: data[f"present/{n}"] for n in self.model.encoders}
        groups = torch.unique(data["group"], return_inverse=True)[1]
        raw = retrieval_metrics(embeddings, self.ks, self.eval_dims, prefix=split, pairs=self.eval_pairs,
                                groups=groups, present=present, chance=True)
        result = {key[len(split) + 1:]: value for key, value in raw.items()}  # keys are "<split>/<name>"
        full_r1 = [result[f"r@1_{q}_{g}"] for a, b in self.eval_pairs for q, g in ((a, b), (b, a))]
        result["r@1_mean"] = float(sum(full_r1) / len(full_r1))
        for k in self.ks:
            chances = [result[f"chance_r@{k}_{q}_{g}"] for a, b in self.eval_pairs for q, g in ((a, b), (b, a))]
            result[f"chance_r@{k}"] = float(sum(chances) / len(chances))
        result["n"] = float(data["uid"].shape[0])
        return result

    def finish_retrieval(self, split: str) -> dict[str, float]:
        """Recall@K of the split's recorded embeddings (every rank's); writes the test split's retrieval
        examples for the report in a training run."""
        data = self.gathered(split)
        result = self.split_results(data, split)
        trainer = self._trainer  # a training run (it logs; `mmtrain eval` does not): examples for report.html
        if split == "test" and trainer is not None and trainer.loggers and trainer.is_global_zero:
            examples = retrieval_examples(data, self.eval_pairs, self.id_names)
            write_retrieval_examples(trainer.default_root_dir, split, examples)
        return result

    def on_validation_epoch_start(self) -> None:
        self._collected["val"] = []

    def on_test_epoch_start(self) -> None:
        self._collected["test"] = []

    def _discard(self, split: str) -> None:
        super()._discard(split)  # type: ignore[misc]
        self._collected[split] = []


class _GatherRows(torch.autograd.Function):
    """Concatenates every rank's rows; backward sums the gradient of the whole over ranks and returns
    this rank's rows of it (each rank's loss may depend on every rank's rows)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:  # type: ignore[override]
        rank = dist.get_rank()
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
        ctx.start, ctx.rows = sum(counts[:rank]), counts[rank]
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.rows], None


def gather_rows(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """``[sum(counts), ...]``: the ``[counts[r], ...]`` tensors of all ranks in rank order, differentiable.

    With every rank computing the same loss ``L`` from the result, the gradient reaching this rank's
    rows is ``world_size * dL/drows``; DDP's mean over ranks then gives each parameter ``dL/dparam``,
    exactly the gradient of one process holding the whole batch. A collective (all_gather forward,
    all_reduce backward): call it on every rank in the same order.
    """
    return _GatherRows.apply(tensor, list(counts))

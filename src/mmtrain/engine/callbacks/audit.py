"""``GradientAudit``: gradient flow, frozen/trainable checks, dead or saturated activations, memory."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import psutil
import torch
from torch import nn

from mmtrain.core.fileio import atomic_write_bytes
from mmtrain.engine.sharding import local_shard as local  # rank 0 alone audits: its shard, no collective
from mmtrain.engine.callbacks.audit_plot import (
    peak_rss_mb,
    plot_grad_flow,
    read_rows,
    summarize_rows,
    write_rows,
)

log = logging.getLogger(__name__)

CSV_NAME, JSON_NAME, PNG_NAME = "grad_audit.csv", "grad_audit.json", "grad_flow.png"
#: Layers whose exactly-zero outputs are counted (``dead_fraction``).
ZERO_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.ELU, nn.CELU, nn.SELU, nn.Softplus,
)
#: Bounded layers -> (low, high) of their output; outputs near a bound count as saturated.
BOUNDED_TYPES: dict[type[nn.Module], tuple[float, float]] = {
    nn.Tanh: (-1.0, 1.0), nn.Sigmoid: (0.0, 1.0), nn.Hardsigmoid: (0.0, 1.0), nn.Softsign: (-1.0, 1.0),
}
_CONTAINERS = (nn.ModuleDict, nn.ModuleList, nn.ParameterDict, nn.ParameterList)


def _bounds(module: nn.Module) -> tuple[float, float] | None:
    if isinstance(module, nn.Hardtanh):  # also ReLU6: (0, 6)
        return float(module.min_val), float(module.max_val)
    return next((b for t, b in BOUNDED_TYPES.items() if isinstance(module, t)), None)


def _is_activation(module: nn.Module) -> bool:
    # transformers' ACT2FN layers (GELUActivation...) are not torch.nn activation subclasses.
    return (isinstance(module, ZERO_TYPES) or _bounds(module) is not None
            or type(module).__module__ == "transformers.activations")


def fingerprint(tensor: torch.Tensor) -> str:
    """Exact fingerprint of a tensor's bytes (blake2b, 16 bytes): equal iff bit-identical in practice."""
    # a copy: numpy over a live parameter's storage would pin it (FSDP2 frees and regathers that storage)
    data = local(tensor.detach()).to("cpu", copy=True).contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def group_of(root: nn.Module, module_path: str, depth: int) -> str:
    """Audit group of the module at ``module_path`` under ``root``: the path cut after ``depth``
    levels, where containers (``ModuleDict``/``ModuleList``) do not count as a level and the
    task's wrapped network (``root.model``) is left out of the name.

    With ``depth=1`` a multimodal task groups as ``encoders.video``, ``fusion``, ``head``; with
    ``depth=2`` as ``encoders.video.frame_encoder``, ``fusion.projection``, ``head.classifier``...
    """
    wrapped = getattr(root, "model", None)
    module, shown, levels = root, [], 0
    for part in module_path.split(".") if module_path else ():
        module = module._modules[part]
        if module is wrapped and not shown:
            continue
        shown.append(part)
        if not isinstance(module, _CONTAINERS):
            levels += 1
            if levels >= depth:
                break
    return ".".join(shown) or "(root)"


@dataclass
class _Pending:
    """State of one audited optimizer step between ``on_before_optimizer_step`` and batch end."""

    step: int
    epoch: int
    grads: dict[str, tuple[float | None, int]]  # group -> (grad L2 norm or None if frozen, non-finite count)
    before: list[tuple[str, nn.Parameter, torch.Tensor]]  # (group, parameter, its value before the step)
    amp_scale: float | None


@dataclass
class _Layer:
    """An activation layer watched on audited steps."""

    path: str
    group: str
    module: nn.Module
    bounds: tuple[float, float] | None  # output range of a bounded layer (tanh...), else None


class GradientAudit(pl.Callback):
    """Audits gradient flow every ``every_n_steps`` optimizer steps; writes CSV, PNG and a summary.

    What is recorded, per *module group* (parameters grouped by module path, see :func:`group_of`;
    ``depth=1`` gives ``encoders.<slot>``, ``fusion``, ``head``) on each audited step:

    - ``grad_norm``: L2 norm of the group's gradients, read in ``on_before_optimizer_step``, i.e.
      after backward (and AMP unscaling) and **before** Lightning's gradient clipping, so it is the
      raw norm; with gradient accumulation it is the accumulated gradient. Blank for a group with no
      trainable parameter; ``0`` for trainable parameters that got no gradient.
    - ``param_norm``: L2 norm of all the group's weights; ``update_ratio``: ||w_after - w_before|| /
      ||w_before|| over its trainable weights for that step (needs one copy of them during the
      audited step; ``update_ratio=False`` skips it).
    - ``nonfinite``: number of NaN/Inf gradient elements (counted only when the norm is non-finite).
    - ``dead_fraction``: fraction of exactly-zero outputs of activation layers (nn.ReLU, GELU, SiLU,
      transformers' ACT2FN layers...), and ``saturated_fraction``: fraction of outputs of bounded
      layers (Tanh, Sigmoid, Hardtanh/ReLU6, Hardsigmoid, Softsign) within ``saturation_margin`` of
      the output range of a bound (tanh: |y| >= 0.98 at the default 0.01); the worst layer of the
      group. Forward hooks exist only while an audited step's training batches run (also every
      micro-batch of an accumulated step), so other steps and validation pay nothing.
    - ``amp_scale``: the GradScaler's scale (``16-mixed``), blank without one; ``rss_mb``: this
      process's resident memory (DataLoader workers not included); ``cuda_max_mb``: peak CUDA
      memory allocated, blank on CPU.

    Parameters are fingerprinted (blake2b of their bytes) when training starts and compared when it
    ends: a frozen parameter (``requires_grad=False`` at the start) must be bit-identical, a
    trainable one must have changed; offenders are listed in the summary and in a warning.

    Files in ``run_dir``: ``grad_audit.csv`` (one row per audited step per group), ``grad_flow.png``
    (mean/max grad norm per group, log scale, and norms over steps) and ``grad_audit.json`` (written
    when training ends or fails). Only global rank 0 audits and writes (under FSDP/DeepSpeed its
    norms are of rank 0's shard). Resume: the start fingerprints and activation totals are saved
    in checkpoints, and CSV rows from steps at or past the resumed step (written after that
    checkpoint by the interrupted run) are dropped before new rows are appended.

    Args:
        run_dir: run directory the files are written to.
        every_n_steps: audit optimizer steps 0, N, 2N... (``trainer.global_step`` before the update).
        depth: module levels per group (containers and the task's ``model`` do not count).
        dead_threshold: a layer whose mean dead fraction over audited steps exceeds this is flagged.
        saturation_threshold: a layer whose mean saturated fraction exceeds this is flagged.
        saturation_margin: fraction of a bounded layer's output range next to a bound that counts
            as saturated.
        update_ratio: record ``update_ratio`` (one copy of the trainable weights on audited steps).
        check_params: fingerprint parameters at start and end (hashes every weight twice; turn off
            only if that is too slow for a huge model).
    """

    def __init__(
        self,
        *,
        run_dir: str,
        every_n_steps: int = 25,
        depth: int = 1,
        dead_threshold: float = 0.9,
        saturation_threshold: float = 0.5,
        saturation_margin: float = 0.01,
        update_ratio: bool = True,
        check_params: bool = True,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"callbacks.grad_audit.every_n_steps must be >= 1, got {every_n_steps}")
        if depth < 1:
            raise ValueError(f"callbacks.grad_audit.depth must be >= 1 (1 = encoders.<slot>/fusion/head), got {depth}")
        for key, value in (("dead_threshold", dead_threshold), ("saturation_threshold", saturation_threshold),
                           ("saturation_margin", saturation_margin)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"callbacks.grad_audit.{key} is a fraction in [0, 1], got {value}")
        self.run_dir = Path(run_dir)
        self.csv_path, self.json_path, self.png_path = (self.run_dir / n for n in (CSV_NAME, JSON_NAME, PNG_NAME))
        self.every_n_steps = int(every_n_steps)
        self.depth = int(depth)
        self.dead_threshold = float(dead_threshold)
        self.saturation_threshold = float(saturation_threshold)
        self.saturation_margin = float(saturation_margin)
        self.update_ratio = bool(update_ratio)
        self.check_params = bool(check_params)
        self._groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
        self._layers: list[_Layer] = []
        self._handles: list[Any] = []
        self._counts: dict[int, list[Any]] = {}  # layer index -> [zeros, saturated | None, numel] this step
        self._counts_step = -1
        self._pending: _Pending | None = None
        self._start: dict[str, tuple[bool, str]] = {}  # parameter -> (trainable at start, fingerprint)
        self._act_totals: dict[str, list[float]] = {}  # layer path -> [sum dead, sum saturated, steps]
        self._restored = False

    def state_dict(self) -> dict[str, Any]:  # saved in checkpoints, so a resumed run checks from its first start
        return {"start": {k: list(v) for k, v in self._start.items()},
                "activations": {k: list(v) for k, v in self._act_totals.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._start = {k: (bool(v[0]), str(v[1])) for k, v in state_dict.get("start", {}).items()}
        self._act_totals = {k: [float(x) for x in v] for k, v in state_dict.get("activations", {}).items()}
        self._restored = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not on_fit_start: weights, this callback's state and global_step are all restored by now.
        if not trainer.is_global_zero:
            return
        self._groups = {}
        for name, param in pl_module.named_parameters():
            self._groups.setdefault(group_of(pl_module, name.rpartition(".")[0], self.depth), []).append((name, param))
        self._layers = [_Layer(path, group_of(pl_module, path, self.depth), module, _bounds(module))
                        for path, module in pl_module.named_modules() if _is_activation(module)]
        if not self._restored:
            self._act_totals = {}
            self._start = ({n: (p.requires_grad, fingerprint(p)) for n, p in pl_module.named_parameters()}
                           if self.check_params else {})
        self._restored = False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        step = trainer.global_step
        kept = [row for row in read_rows(self.csv_path) if row["step"] is not None and row["step"] < step] if step else []
        write_rows(self.csv_path, kept, append=False)
        log.info("gradient audit: every %d steps, %d module groups, %d activation layers -> %s",
                 self.every_n_steps, len(self._groups), len(self._layers), self.csv_path)

    def _audit_now(self, trainer: pl.Trainer) -> bool:
        return bool(self._groups) and trainer.is_global_zero and trainer.global_step % self.every_n_steps == 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._audit_now(trainer) and not self._handles:
            if self._counts_step != trainer.global_step:  # drop counts of a step that was not audited after all
                self._counts, self._counts_step = {}, trainer.global_step
            self._handles = [layer.module.register_forward_hook(self._activation_hook(i))
                             for i, layer in enumerate(self._layers)]

    def _activation_hook(self, index: int) -> Any:
        bounds = self._layers[index].bounds
        margin = None if bounds is None else self.saturation_margin * (bounds[1] - bounds[0])

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if not isinstance(output, torch.Tensor) or output.numel() == 0:
                return
            y = output.detach()
            zeros = (y == 0).sum()
            saturated = None if bounds is None else ((y <= bounds[0] + margin) | (y >= bounds[1] - margin)).sum()
            entry = self._counts.get(index)
            if entry is None:
                self._counts[index] = [zeros, saturated, y.numel()]
            else:
                entry[0] = entry[0] + zeros
                entry[1] = None if saturated is None else entry[1] + saturated
                entry[2] += y.numel()

        return hook

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        step = trainer.global_step
        if not self._audit_now(trainer) or (self._pending is not None and self._pending.step == step):
            return
        grads: dict[str, tuple[float | None, int]] = {}
        before: list[tuple[str, nn.Parameter, torch.Tensor]] = []
        seen_grad = False
        for group, params in self._groups.items():
            trainable = [p for _, p in params if p.requires_grad]
            if not trainable:
                grads[group] = (None, 0)
                continue
            with_grad = [p for p in trainable if p.grad is not None]
            seen_grad = seen_grad or bool(with_grad)
            norms = [torch.linalg.vector_norm(local(p.grad), dtype=torch.float32) for p in with_grad]
            norm = float(torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))) if norms else 0.0
            nonfinite = 0 if math.isfinite(norm) else sum(int((~torch.isfinite(local(p.grad))).sum()) for p in with_grad)
            grads[group] = (norm, nonfinite)
            if self.update_ratio:
                before += [(group, p, local(p.detach()).clone()) for p in with_grad]
        if not seen_grad:  # e.g. a batch whose samples were all skipped: nothing to audit this step
            log.debug("gradient audit: step %d has no gradient; not audited", step)
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        amp_scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else None
        self._pending = _Pending(step, trainer.current_epoch, grads, before, amp_scale)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._remove_hooks()
        pending, self._pending = self._pending, None
        if pending is None:
            return
        updated: dict[str, list[float]] = {}  # group -> [sum ||delta||^2, sum ||before||^2]
        for group, param, old in pending.before:
            acc = updated.setdefault(group, [0.0, 0.0])
            acc[0] += float(torch.linalg.vector_norm((local(param.detach()) - old).float())) ** 2
            acc[1] += float(torch.linalg.vector_norm(old.float())) ** 2
        dead, saturated = self._collect_activations()
        rss_mb = psutil.Process(os.getpid()).memory_info().rss / 2**20
        cuda_mb = (torch.cuda.max_memory_allocated(pl_module.device) / 2**20
                   if pl_module.device.type == "cuda" else None)
        rows = []
        for group in dict.fromkeys([*self._groups, *(layer.group for layer in self._layers)]):
            norm, nonfinite = pending.grads.get(group, (None, 0))
            params = [p for _, p in self._groups.get(group, [])]
            param_norm = math.sqrt(sum(float(torch.linalg.vector_norm(local(p.detach()).float())) ** 2 for p in params))
            delta = updated.get(group)
            rows.append({
                "step": pending.step, "epoch": pending.epoch, "module": group, "grad_norm": norm,
                "param_norm": param_norm if params else None,
                "update_ratio": math.sqrt(delta[0] / delta[1]) if delta and delta[1] > 0 else None,
                "nonfinite": nonfinite, "dead_fraction": dead.get(group), "saturated_fraction": saturated.get(group),
                "amp_scale": pending.amp_scale, "rss_mb": rss_mb, "cuda_max_mb": cuda_mb,
            })
        write_rows(self.csv_path, rows, append=True)

    def _collect_activations(self) -> tuple[dict[str, float], dict[str, float]]:
        """This step's counts -> worst dead/saturated fraction per group; adds to the run's totals."""
        dead: dict[str, float] = {}  # group -> worst layer's fraction
        saturated: dict[str, float] = {}
        for index, (zeros, sat, numel) in self._counts.items():
            layer = self._layers[index]
            fractions = [float(zeros) / numel, None if sat is None else float(sat) / numel]
            total = self._act_totals.setdefault(layer.path, [0.0, 0.0, 0.0])
            total[:] = [total[0] + fractions[0], total[1] + (fractions[1] or 0.0), total[2] + 1]
            dead[layer.group] = max(dead.get(layer.group, 0.0), fractions[0])
            if fractions[1] is not None:
                saturated[layer.group] = max(saturated.get(layer.group, 0.0), fractions[1])
        self._counts = {}
        return dead, saturated

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Not on_fit_end: by then ExportCallback may have loaded the best checkpoint's weights.
        self._remove_hooks()
        if trainer.is_global_zero and self._groups:
            self._finish(pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove_hooks()
        if trainer.is_global_zero and self._groups:
            try:
                self._finish(pl_module)
            except Exception:  # never hide the exception that ended the run
                log.exception("gradient audit: could not write the summary after the run failed")

    def _finish(self, pl_module: pl.LightningModule) -> None:
        """Compare fingerprints, write ``grad_audit.json`` and ``grad_flow.png``, warn about findings."""
        current = dict(pl_module.named_parameters())
        group = {name: g for g, params in self._groups.items() for name, _ in params}
        frozen_changed, never_changed = [], []
        for name, (trainable, start) in self._start.items():
            if name in current and (fingerprint(current[name]) == start) == trainable:
                (never_changed if trainable else frozen_changed).append(name)
        kinds = {layer.path: (layer.group, type(layer.module).__name__) for layer in self._layers}
        rows = read_rows(self.csv_path)
        trainable_count = sum(1 for flag, _ in self._start.values() if flag)
        summary = {
            "run_dir": str(self.run_dir), "every_n_steps": self.every_n_steps, "depth": self.depth,
            "grad_norm": "L2 norm per module group, before gradient clipping",
            **summarize_rows(rows),
            "params_checked": self.check_params,
            "frozen_parameters": len(self._start) - trainable_count,
            "frozen_unchanged": not frozen_changed if self.check_params else None,
            "frozen_changed": frozen_changed,
            "frozen_changed_modules": sorted({group.get(n, "?") for n in frozen_changed}),
            "trainable_parameters": trainable_count,
            "trainable_never_changed": never_changed,
            "trainable_never_changed_modules": sorted({group.get(n, "?") for n in never_changed}),
            "dead_activations": self._flagged(0, self.dead_threshold, kinds),
            "saturated_activations": self._flagged(1, self.saturation_threshold, kinds),
            "thresholds": {"dead": self.dead_threshold, "saturated": self.saturation_threshold,
                           "saturation_margin": self.saturation_margin},
            "peak_rss_mb": max([peak_rss_mb(), *(r["rss_mb"] or 0.0 for r in rows)]),  # no rows: a run that failed early
        }
        atomic_write_bytes(self.json_path, json.dumps(summary, indent=2).encode())
        plot_grad_flow(rows, self.png_path, title=self.run_dir.name)
        self._warn(summary)

    def _flagged(self, column: int, threshold: float, kinds: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
        """Layers whose mean fraction (0: dead, 1: saturated) over audited steps exceeds ``threshold``."""
        flagged = []
        for path, totals in self._act_totals.items():
            value = totals[column] / totals[2] if totals[2] else 0.0
            if value > threshold:
                module, kind = kinds.get(path, ("?", "?"))
                flagged.append({"layer": path, "module": module, "type": kind, "fraction": round(value, 4)})
        return flagged

    def _warn(self, summary: dict[str, Any]) -> None:
        where = f"see {self.json_path}"
        if summary["frozen_changed"]:
            log.warning("gradient audit: %d frozen parameter(s) (requires_grad=False at the start) CHANGED during "
                        "training, in %s: %s. Something other than the optimizer writes them (or they were "
                        "unfrozen); %s", len(summary["frozen_changed"]), ", ".join(summary["frozen_changed_modules"]),
                        ", ".join(summary["frozen_changed"][:5]), where)
        if summary["trainable_never_changed"]:
            log.warning("gradient audit: %d trainable parameter(s) NEVER changed during training, in %s: %s. They "
                        "get no gradient (unused in forward?) or a zero learning rate; %s",
                        len(summary["trainable_never_changed"]), ", ".join(summary["trainable_never_changed_modules"]),
                        ", ".join(summary["trainable_never_changed"][:5]), where)
        if summary["nonfinite_grad_modules"]:
            log.warning("gradient audit: non-finite gradients in %s; %s",
                        ", ".join(summary["nonfinite_grad_modules"]), where)
        for key, threshold in (("dead_activations", self.dead_threshold),
                               ("saturated_activations", self.saturation_threshold)):
            if summary[key]:
                log.warning("gradient audit: %s over %.0f%% in %s; %s", key.replace("_", " "), 100 * threshold,
                            ", ".join(f"{f['layer']} ({f['fraction']:.0%})" for f in summary[key][:8]), where)


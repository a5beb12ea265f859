"""The top of a run's report: the verdict, the curves, the metrics table, per-class results.

Each builder takes a :class:`RunData` and returns HTML, or ``""`` when the run lacks its files.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmtrain.app.report import plots, sources
from mmtrain.app.report.common import RunData, lower_is_better, scalars, section, table

# Per-step/-epoch tags that are not metric curves.
_NOT_CURVES = ("loss", "skipped", "n", "epoch", "temperature")


def _best(run: RunData, key: str) -> tuple[float, int | None] | None:
    """Best per-epoch validation value of ``key`` and its epoch, from the curves; 0-based, as Lightning
    and the checkpoint names (``best-epoch09-...``) count them."""
    series = run.series.get(f"val/{key}")
    if not series:
        return None
    pick = min if lower_is_better(key, run) else max
    step, value = pick(series, key=lambda point: point[1])
    epoch = sources.epoch_at(run.series, step)
    return value, epoch


def _standing(value: float, chance: float) -> tuple[str, str]:
    """(css class, words) for a score against its chance level."""
    ratio = value / chance if chance > 0 else float("inf")
    if ratio < 0.9:
        return "bad", "below chance"
    if ratio < 1.1:
        return "bad", "at chance level"
    if ratio < 1.5:
        return "weak", f"{ratio:.2f}× chance"
    return "good", f"{ratio:.2f}× chance"


def _trend(run: RunData) -> list[str]:
    """Plain sentences on how the losses moved."""
    lines = []
    by_epoch: dict[int, list[float]] = {}
    for row in run.steps:
        by_epoch.setdefault(int(row["epoch"]), []).append(row["loss"])
    if len(by_epoch) >= 2:
        first, last = by_epoch[min(by_epoch)], by_epoch[max(by_epoch)]
        lines.append(f"train loss (epoch mean) {sum(first) / len(first):.3f} → {sum(last) / len(last):.3f} "
                     f"over {len(by_epoch)} epochs")
    val = run.series.get("val/loss") or []
    if len(val) >= 2:
        low = min(val, key=lambda p: p[1])
        lines.append(f"val loss {val[0][1]:.3f} → {val[-1][1]:.3f} (lowest {low[1]:.3f})")
    return lines


def _warnings(run: RunData) -> list[str]:
    """What went wrong or looks suspicious, one sentence each (empty for a clean run)."""
    out = []
    skips = run.metrics.get("nonfinite_skips") or {}
    if isinstance(skips, Mapping) and skips.get("count"):
        out.append(f"{skips['count']} optimizer step(s) skipped for a non-finite loss")
    skipped = run.metrics.get("skipped") or {}
    total = sum(int(v.get("skipped", 0)) for v in skipped.values() if isinstance(v, Mapping))
    if total:
        out.append(f"{total} sample(s) skipped as undecodable (see Skipped samples)")
    audit = run.audit
    for key, words in (("nonfinite_grad_modules", "non-finite gradients in"),
                       ("no_gradient_modules", "no gradient reached"),
                       ("trainable_never_changed_modules", "trainable parameters never changed in"),
                       ("frozen_changed_modules", "frozen parameters changed in"),
                       ("dead_activations", "dead activations in"),
                       ("saturated_activations", "saturated activations in")):
        names = audit.get(key) or []
        if names:
            shown = ", ".join(str(n if not isinstance(n, Mapping) else n.get("module", n)) for n in names[:6])
            out.append(f"gradient audit: {words} {shown}")
    return out


def verdict(run: RunData) -> str:
    """The header: headline metric on test and best val, against chance; the run's size; warnings."""
    key = run.primary_key()
    facts: list[str] = []
    badge = ""
    if key is not None:
        chance = run.chance(key)
        test = scalars(run.split("test")).get(key)
        best = _best(run, key)
        if test is not None:
            facts.append(f"<b>test {html.escape(key)} {test:.3f}</b>")
            if chance is not None and not lower_is_better(key, run):
                cls, words = _standing(test, chance)
                badge = f'<span class="badge {cls}">{html.escape(words)}</span>'
        if best is not None:
            value, epoch = best
            facts.append(f"best val {html.escape(key)} {value:.3f}"
                         + (f" (epoch {epoch:02d}, as the checkpoint names count)" if epoch is not None else ""))
        elif key in scalars(run.split("val")):
            facts.append(f"val {html.escape(key)} {run.split('val')[key]:.3f} (best checkpoint)")
        if chance is not None:
            facts.append(f"chance {chance:.3f}" + (f" (1/{run.num_classes()} classes)" if key == "acc" else ""))
    size = [f"{run.metrics[k]} {w}" for k, w in (("epochs", "epochs"), ("global_steps", "steps"))
            if run.metrics.get(k) is not None]
    if isinstance(run.metrics.get("fit_seconds"), (int, float)):
        size.append(f"{run.metrics['fit_seconds']:.1f} s training")
    monitor = sources.config_value(run.config, "callbacks.checkpoint.monitor")
    best_ckpt = run.metrics.get("best_checkpoint")
    if best_ckpt:
        size.append(f"best checkpoint {html.escape(Path(str(best_ckpt)).name)}"
                    + (f" (by {html.escape(str(monitor))})" if monitor else ""))
    lines = [" · ".join(facts) + " " + badge if facts else "", " · ".join(size),
             *(html.escape(t) for t in _trend(run))]
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in _warnings(run))
    body = "".join(f"<p>{line}</p>" for line in lines if line.strip())
    if warn:
        body += f'<ul class="warn">{warn}</ul>'
    else:
        body += '<p class="ok">no skipped steps, skipped samples or gradient-audit findings</p>'
    return f'<div class="verdict" id="verdict">{body}</div>'


def _curve_tags(run: RunData, key: str | None) -> list[str]:
    """Per-epoch metric tags worth a line: the headline metric first, val before train, at most 8."""
    tags = []
    for tag in run.series:
        prefix, _, name = tag.partition("/")
        if prefix not in ("val", "train") or name in _NOT_CURVES or name.startswith(("chance", "n_", "temperature")):
            continue
        if name.endswith("loss_step") or name.endswith("loss_epoch") or name.count("@") > 1:
            continue
        if name.startswith("r@") and not name.startswith("r@1_"):
            continue  # retrieval: R@1 per direction only (R@5/10 are in the Recall@K section)
        tags.append(tag)
    tags.sort(key=lambda t: (t.split("/", 1)[1] != key, t.startswith("train/"), t))
    return tags[:8]


def curves(run: RunData) -> str:
    """Loss per step with the per-epoch losses; the per-epoch metrics against chance."""
    parts = []
    boundaries = run.epoch_boundaries()
    train = [(row["global_step"] - 1, row["loss"]) for row in run.steps]  # 0-based, as TensorBoard logs
    epochs = {name: run.series[tag] for tag, name in (("train/loss_epoch", "train loss (epoch mean)"),
                                                       ("val/loss", "val loss")) if run.series.get(tag)}
    if train or epochs:
        parts.append(plots.loss_curves(train, epochs, boundaries))
    key = run.primary_key()
    tags = _curve_tags(run, key)
    if tags:
        parts.append(plots.metric_curves({t: run.series[t] for t in tags}, run.chance(key), boundaries))
    rates = {tag: points for tag, points in run.series.items() if tag.startswith("lr-") and points}
    if rates:  # the LR monitor's curve (warm-up, cosine decay...)
        parts.append(plots.learning_rate(rates, boundaries))
    return section("curves", "Curves", f'<div class="grid">{"".join(parts)}</div>') if parts else ""


def metrics_table(run: RunData) -> str:
    """Every scalar metric, one column per split (and per one-modality test)."""
    columns = {s: scalars(run.split(s)) for s in ("val", "test") if run.split(s)}
    for modality, result in (run.metrics.get("test_only_one_modality") or {}).items():
        if isinstance(result, Mapping):
            columns[f"test ({modality} only)"] = scalars(result)
    keys = list(dict.fromkeys(k for values in columns.values() for k in values))
    if not keys:
        return ""
    return section("metrics", "Metrics", table(
        ["metric", *columns], ([k, *(v.get(k, "-") for v in columns.values())] for k in keys)))


def class_metrics(matrix: list[list[int]], names: list[str]) -> list[dict[str, Any]]:
    """Per class (rows = true, columns = predicted): recall (= per-class accuracy), precision, F1, support."""
    rows = []
    for i, name in enumerate(names):
        true = sum(int(c) for c in matrix[i]) if i < len(matrix) else 0
        predicted = sum(int(row[i]) for row in matrix if i < len(row))
        hit = int(matrix[i][i]) if i < len(matrix) and i < len(matrix[i]) else 0
        recall = hit / true if true else 0.0
        precision = hit / predicted if predicted else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "recall": recall, "precision": precision, "f1": f1, "support": true})
    return rows


def _class_block(run: RunData, split: str, chance: float | None) -> str:
    result = run.split(split)
    per_class = result.get("per_class_acc")
    matrix = result.get("confusion")
    names = list(per_class) if isinstance(per_class, Mapping) else []
    if isinstance(matrix, list) and matrix and len(names) != len(matrix):
        names = [str(i) for i in range(len(matrix))]
    parts = []
    if isinstance(matrix, list) and matrix:
        rows = class_metrics(matrix, names)
        acc = per_class if isinstance(per_class, Mapping) else {r["class"]: r["recall"] for r in rows}
        figures = plots.per_class(names, {"recall (acc)": [r["recall"] for r in rows],
                                          "precision": [r["precision"] for r in rows],
                                          "f1": [r["f1"] for r in rows]}, chance, split)
        figures += plots.confusion(matrix, names, split)
        parts.append(f'<div class="grid">{figures}</div>')
        parts.append(table(["class", "acc", "precision", "recall", "f1", "support"],
                           ([r["class"], float(acc.get(r["class"], r["recall"])), r["precision"], r["recall"],
                             r["f1"], r["support"]] for r in rows)))
    elif isinstance(per_class, Mapping) and per_class:
        parts.append(table(["class", "acc"], per_class.items()))
        parts.append(plots.per_class(names, {"acc": [float(v) for v in per_class.values()]}, chance, split))
    return "".join(parts)


def classes(run: RunData) -> str:
    """Per-class table and bars and the confusion matrix: the main split open, the other folded."""
    chance = run.chance("acc")
    blocks = [(s, _class_block(run, s, chance)) for s in ("test", "val")]
    blocks = [(s, b) for s, b in blocks if b]
    if not blocks:
        return ""
    (first, body), rest = blocks[0], blocks[1:]
    for split, block in rest:
        body += f"<details><summary>{html.escape(split)} split</summary>{block}</details>"
    return section("classes", f"Per-class metrics and confusion matrix ({first})", body)


"""The lower part of a run's report: retrieval, gradient flow, skipped samples, timings, the rest.

Each builder takes a :class:`RunData` and returns HTML, or ``""`` when the run lacks its files.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any

from mmtrain.app.report import plots, sources
from mmtrain.app.report.common import RunData, scalars, section, table

_RECALL = re.compile(r"^(chance_)?r@(\d+)_(.+?)(?:@(\d+))?$")
EXAMPLES_NAME = "retrieval_examples.json"
# metrics.json keys the other sections show; anything else lands in "Other run facts".
SHOWN = {"run_dir", "best_checkpoint", "epochs", "global_steps", "fit_seconds", "resumed_from", "val", "test",
         "test_only_one_modality", "nonfinite_skips", "skipped", "token_budget"}


def _direction(pair: str) -> str:
    return pair.replace("_", " → ", 1) if pair.count("_") == 1 else pair


def recall_table(result: Mapping[str, Any]) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, float]],
                                                      list[list[Any]]]:
    """Full-width Recall@K and chance per direction, and table rows (every direction and width)."""
    full: dict[str, dict[int, float]] = {}
    chance: dict[str, dict[int, float]] = {}
    widths: dict[tuple[str, str], dict[int, float]] = {}
    for key, value in scalars(result).items():
        match = _RECALL.match(key)
        if not match or match.group(3) == "mean":
            continue
        is_chance, k, pair, width = match.group(1), int(match.group(2)), _direction(match.group(3)), match.group(4)
        if is_chance:
            chance.setdefault(pair, {})[k] = float(value)
        else:
            widths.setdefault((pair, width or "full"), {})[k] = float(value)
            if width is None:
                full.setdefault(pair, {})[k] = float(value)
    ks = sorted({k for values in widths.values() for k in values})
    rows = [[pair, width, *(values.get(k, "-") for k in ks), *(chance.get(pair, {}).get(k, "-") for k in ks)]
            for (pair, width), values in widths.items()]
    return full, chance, [ks, *rows] if rows else []


def retrieval(run: RunData) -> str:
    """Recall@K bars (chance marked) and the table of every direction and width; a few examples."""
    parts = []
    split = run.main_split
    if split:
        full, chance, rows = recall_table(run.split(split))
        if full:
            ks = rows[0]
            parts.append(plots.recall_at_k(full, chance, split))
            parts.append(table(["direction", "width", *(f"R@{k}" for k in ks), *(f"chance R@{k}" for k in ks)],
                               rows[1:]))
    examples = sources.read_json(run.folder / EXAMPLES_NAME)
    if isinstance(examples, Mapping) and isinstance(examples.get("examples"), list) and examples["examples"]:
        parts.append(f"<h3>Retrieval examples ({html.escape(str(examples.get('split', '')))})</h3>"
                     "<p class='muted'>top results per query; ✓ = same match group as the query</p>")
        rows = []
        for item in examples["examples"]:
            if not isinstance(item, Mapping):
                continue
            hits = item.get("correct") or []
            found = [f"{'✓' if i < len(hits) and hits[i] else '✗'} {r}"
                     for i, r in enumerate(item.get("retrieved") or [])]
            rows.append([_direction(str(item.get("direction", ""))), item.get("query", ""), *found])
        width = max((len(r) for r in rows), default=2) - 2
        parts.append(table(["direction", "query", *(f"#{i + 1}" for i in range(width))], rows))
    return section("retrieval", f"Retrieval ({split})" if split else "Retrieval", "".join(parts)) if parts else ""


def gradients(run: RunData) -> str:
    """The gradient audit: its figure (``grad_flow.png``), per-module norms, the audit's findings."""
    parts = []
    figure = run.folder / "grad_flow.png"
    if figure.is_file():
        parts.append(plots.image_tag(figure.read_bytes(), "gradient flow"))
    modules = run.audit.get("modules")
    if isinstance(modules, Mapping) and modules:
        parts.append(table(["module", "frozen", "grad norm mean", "grad norm max", "non-finite steps"], (
            [name, bool(m.get("frozen")), m.get("grad_norm_mean", "-"), m.get("grad_norm_max", "-"),
             m.get("nonfinite_steps", "-")] for name, m in modules.items() if isinstance(m, Mapping))))
    elif run.audit_rows:  # an audit without its summary: the last audited step
        last = run.audit_rows[-1].get("step")
        parts.append(table(["module", "grad_norm", "param_norm", "update_ratio"], (
            [r.get("module"), r.get("grad_norm"), r.get("param_norm"), r.get("update_ratio")]
            for r in run.audit_rows if r.get("step") == last)))
    facts = [(k, run.audit[k]) for k in ("steps_audited", "every_n_steps", "grad_norm", "trainable_parameters",
                                         "frozen_parameters", "trainable_never_changed", "frozen_changed",
                                         "dead_activations", "saturated_activations", "peak_rss_mb")
             if k in run.audit and run.audit[k] not in (None, [])]
    if facts:
        parts.append(table(["audit", "value"], ([k, v if not isinstance(v, list) else ", ".join(map(str, v))]
                                                for k, v in facts)))
    return section("gradients", "Gradient flow", "".join(parts)) if parts else ""


def skipped(run: RunData) -> str:
    """Skipped samples per split, by modality and error, and the first few ledger entries."""
    parts = []
    summary = run.metrics.get("skipped") or {}
    if isinstance(summary, Mapping) and summary:
        rows = []
        for split, value in summary.items():
            if isinstance(value, Mapping):
                seen, count = value.get("seen"), int(value.get("skipped", 0))
                share = f"{count / seen:.2%}" if isinstance(seen, (int, float)) and seen else "-"
                rows.append([split, count, seen if seen is not None else "-", share])
        parts.append(table(["split", "skipped", "seen", "share"], rows))
    if run.skipped_counts:
        parts.append("<h3>By modality and error</h3>" + table(
            ["split", "modality", "error", "count"], ([*k, n] for k, n in run.skipped_counts.most_common())))
        parts.append(f"<details><summary>first {len(run.skipped_first)} entries of skipped.jsonl</summary>" + table(
            ["split", "epoch", "id", "modality", "file", "error"],
            ([e.get(k, "") for k in ("split", "epoch", "id", "modality", "file", "error")]
             for e in run.skipped_first)) + "</details>")
    skips = run.metrics.get("nonfinite_skips")
    if isinstance(skips, Mapping) and skips.get("count"):
        parts.append(f"<h3>Non-finite loss: {int(skips['count'])} step(s) skipped</h3><pre>"
                     + html.escape(json.dumps(skips.get("steps"), indent=1)[:4000]) + "</pre>")
    return section("skipped", "Skipped samples", "".join(parts)) if parts else ""


def _flat(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, Mapping):
        return [item for k, v in value.items() for item in _flat(v, f"{prefix}{k}.")]
    return [(prefix.rstrip("."), value if not isinstance(value, list) else json.dumps(value)[:200])]


def timings(run: RunData) -> str:
    """Epochs, steps, wall time and speed, memory, the best checkpoint; the LM token budget."""
    m = run.metrics
    rows: list[list[Any]] = [[k.replace("_", " "), m[k]] for k in ("epochs", "global_steps", "fit_seconds")
                             if m.get(k) is not None]
    if isinstance(m.get("fit_seconds"), (int, float)) and m.get("global_steps"):
        rows.append(["seconds per step", m["fit_seconds"] / m["global_steps"]])
        if m.get("epochs"):
            rows.append(["seconds per epoch", m["fit_seconds"] / m["epochs"]])
    seen = (m.get("skipped") or {}).get("train", {}) if isinstance(m.get("skipped"), Mapping) else {}
    if isinstance(seen, Mapping) and seen.get("seen") and isinstance(m.get("fit_seconds"), (int, float)):
        rows.append(["train samples per second (incl. validation)", seen["seen"] / max(m["fit_seconds"], 1e-9)])
    for key, label in (("peak_rss_mb", "peak RSS (MB)"), ("cuda_max_mb", "peak CUDA memory (MB)")):
        if run.audit.get(key) is not None:
            rows.append([label, run.audit[key]])
    rows += [[k.replace("_", " "), m[k]] for k in ("best_checkpoint", "resumed_from") if m.get(k)]
    parts = [table(["", "value"], rows)] if rows else []
    budget = m.get("token_budget")
    if budget:
        parts.append("<h3>LM token budget</h3>" + table(["", "value"], _flat(budget)))
    return section("timings", "Run and timings", "".join(parts)) if parts else ""


def others(run: RunData) -> str:
    """metrics.json keys no other section shows (newer runs may add some), as JSON."""
    rest = {k: v for k, v in run.metrics.items() if k not in SHOWN}
    if not rest:
        return ""
    return section("other", "Other run facts", "<pre>" + html.escape(json.dumps(rest, indent=2)[:20000]) + "</pre>")


def config(run: RunData) -> str:
    if run.config is None:
        return ""
    return section("config", "Config", "<details><summary>config.yaml (resolved)</summary><pre>"
                   + html.escape(run.config) + "</pre></details>")

"""A few retrieval examples of a contrastive run, for the report: ``retrieval_examples.json``.

For each evaluated modality pair and direction, the first ``queries`` samples (that have both
modalities) query the whole split's gallery by cosine similarity; the ``top`` nearest gallery
samples are written with their sample ids and whether each is a match (same match group).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

EXAMPLES_NAME = "retrieval_examples.json"


def retrieval_examples(data: Mapping[str, torch.Tensor], pairs: Sequence[Sequence[str]], names: Mapping[int, str],
                       queries: int = 5, top: int = 3) -> list[dict[str, Any]]:
    """Examples from gathered split records (``emb/<slot>``, ``present/<slot>``, ``uid``, ``group``)."""
    out: list[dict[str, Any]] = []
    uid, group = data["uid"].tolist(), data["group"]
    for a, b in pairs:
        for query, gallery in ((a, b), (b, a)):
            rows = torch.nonzero(data[f"present/{query}"] & data[f"present/{gallery}"]).flatten()
            if rows.numel() == 0:
                continue
            q = F.normalize(data[f"emb/{query}"][rows].float(), dim=-1)
            g = F.normalize(data[f"emb/{gallery}"][rows].float(), dim=-1)
            best = (q[:queries] @ g.T).topk(min(top, len(rows)), dim=-1).indices
            for i, hits in enumerate(best.tolist()):
                row = int(rows[i])
                found = [int(rows[h]) for h in hits]
                out.append({"direction": f"{query}_{gallery}", "query": names.get(uid[row], str(uid[row])),
                            "retrieved": [names.get(uid[r], str(uid[r])) for r in found],
                            "correct": [bool(group[r] == group[row]) for r in found]})
    return out


def write_retrieval_examples(folder: str | Path, split: str, examples: list[dict[str, Any]]) -> Path:
    path = Path(folder) / EXAMPLES_NAME
    path.write_text(json.dumps({"split": split, "examples": examples}, indent=1))
    return path

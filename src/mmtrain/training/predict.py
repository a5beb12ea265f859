"""``mmtrain predict``: one sample through an exported model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmtrain.data.media import read_audio, read_image, read_video
from mmtrain.training.export import find_export


def predict(
    export_dir: str | Path,
    *,
    video: str | None = None,
    audio: str | None = None,
    image: str | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    """Label and class probabilities for one sample; modalities not given are marked absent."""
    from transformers import AutoModel, AutoProcessor

    import mmtrain  # noqa: F401  (registers the Auto classes)

    folder = find_export(export_dir)
    model = AutoModel.from_pretrained(str(folder)).eval()
    processor = AutoProcessor.from_pretrained(str(folder))
    sample: dict[str, Any] = {"id": "input"}
    if video:
        sample["video"] = read_video(video, num_frames=processor.num_frames)
    if audio:
        sample["audio"] = read_audio(audio)
    if image:
        sample["image"] = read_image(image)
    if text is not None:
        sample["text"] = text
    given = [m for m in processor.modalities if sample.get(m) is not None]
    if not given:
        raise ValueError(f"give at least one of --{' / --'.join(processor.modalities)} (the model's modalities).")
    batch = processor([sample])
    batch.pop("ids")
    with torch.no_grad():
        probs = model(**batch).logits.softmax(-1)[0]
    id2label = model.config.id2label
    best = int(probs.argmax())
    return {
        "label": id2label[best],
        "probabilities": {id2label[i]: round(float(p), 6) for i, p in enumerate(probs)},
        "modalities_used": given,
    }

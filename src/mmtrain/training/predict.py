"""``mmtrain predict``: one sample through an exported model of any kind.

A classifier returns its label and class probabilities; a pairwise comparator takes two items of
a modality (``--image a.png --image b.png``) and returns First / Second / Similar with
probabilities; a contrastive model returns each given modality's embedding and the cosine
similarity of every pair of them. An LLM-decoder model with a classification head returns its
label; one without (instruction-tuned) writes an answer to the prompt (``--text`` is the question),
greedy, or picks the likeliest of ``--choice`` answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mmtrain.data.media import read_audio, read_image, read_video
from mmtrain.hf.processing import model_inputs
from mmtrain.training.export import find_export

Inputs = Sequence[str] | str | None


def _many(values: Inputs) -> list[str]:
    if values is None:
        return []
    return [values] if isinstance(values, str) else list(values)


def _sample(processor: Any, video: Inputs, audio: Inputs, image: Inputs, text: Inputs) -> dict[str, Any]:
    """Raw sample from files and text; a modality given twice becomes a list (an item pair)."""
    readers = {
        "video": lambda path: read_video(path, num_frames=processor.num_frames),
        "audio": read_audio,
        "image": read_image,
        "text": str,
    }
    sample: dict[str, Any] = {"id": "input"}
    for modality, given in (("video", video), ("audio", audio), ("image", image), ("text", text)):
        values = [readers[modality](v) for v in _many(given)]
        if values:
            sample[modality] = values[0] if len(values) == 1 else values
    return sample


def _labels(probs: torch.Tensor, id2label: dict[int, str]) -> dict[str, Any]:
    best = int(probs.argmax())
    return {"label": id2label[best], "probabilities": {id2label[i]: round(float(p), 6) for i, p in enumerate(probs)}}


def predict(
    export_dir: str | Path,
    *,
    video: Inputs = None,
    audio: Inputs = None,
    image: Inputs = None,
    text: Inputs = None,
    choices: Sequence[str] | None = None,
    max_new_tokens: int = 16,
) -> dict[str, Any]:
    """Run one sample through the export in ``export_dir``; modalities not given are marked absent.

    ``choices`` / ``max_new_tokens``: for an instruction-tuned LLM model (see the module docstring)."""
    from transformers import AutoModel, AutoProcessor

    import mmtrain  # noqa: F401  (registers the Auto classes)
    from mmtrain.hf.contrastive import ContrastiveModel
    from mmtrain.hf.llm import LLMModel
    from mmtrain.hf.pairwise import PairwiseModel

    folder = find_export(export_dir)
    model = AutoModel.from_pretrained(str(folder)).eval()
    processor = AutoProcessor.from_pretrained(str(folder))
    sample = _sample(processor, video, audio, image, text)
    given = [m for m in processor.modalities if sample.get(m) is not None]
    if not given:
        raise ValueError(f"give at least one of --{' / --'.join(processor.modalities)} (the model's modalities).")
    pairs = [m for m in given if isinstance(sample[m], list)]
    if isinstance(model, PairwiseModel):
        if sorted(pairs) != sorted(given) or any(len(sample[m]) != 2 for m in given):
            raise ValueError(f"a pairwise model compares two items: give each modality twice, e.g. "
                             f"--{given[0]} first --{given[0]} second (got {given}).")
    elif pairs:
        raise ValueError(f"--{pairs[0]} was given more than once; only pairwise models take two items.")
    batch = model_inputs(processor([sample]))
    result: dict[str, Any] = {"modalities_used": given}
    if isinstance(model, LLMModel) and model.head is None:
        return {**_answer(model, processor, batch, choices, max_new_tokens), **result}
    if choices:
        raise ValueError("--choice is for instruction-tuned LLM models (model=llm without a head).")
    with torch.no_grad():
        output = model(**batch)
    if isinstance(model, ContrastiveModel):
        embeddings = {m: output.embeddings[m][0] for m in given if m in output.embeddings}
        result["embeddings"] = {m: [round(float(x), 6) for x in e] for m, e in embeddings.items()}
        names = list(embeddings)
        result["cosine_similarity"] = {
            f"{a}_{b}": round(float(torch.nn.functional.cosine_similarity(embeddings[a], embeddings[b], dim=0)), 6)
            for i, a in enumerate(names) for b in names[i + 1:]
        }
        return result
    return {**_labels(output.logits.softmax(-1)[0], model.config.id2label), **result}


def _answer(model: Any, processor: Any, batch: dict[str, Any], choices: Sequence[str] | None,
            max_new_tokens: int) -> dict[str, Any]:
    """The LLM's answer to one prompt: greedy, or the likeliest of ``choices`` with their probabilities."""
    builder, tokenizer = processor.prompt_builder, processor.tokenizer
    prompt = {"lm_prompt_ids": batch.pop("lm_input_ids"), "lm_prompt_mask": batch.pop("lm_attention_mask")}
    if choices:
        candidates = [builder.answer_ids({"target_text": c}) for c in choices]
        scores = model.score_answers(**prompt, **batch, candidates=candidates)[0].softmax(-1)
        return {"answer": choices[int(scores.argmax())],
                "choice_probabilities": {c: round(float(p), 6) for c, p in zip(choices, scores)}}
    ids = model.generate_answers(**prompt, **batch, max_new_tokens=max_new_tokens,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return {"answer": tokenizer.decode(ids[0], skip_special_tokens=True).strip()}

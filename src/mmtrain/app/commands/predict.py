"""``mmtrain predict``: one sample through an exported model of any kind.

A classifier returns its label and class probabilities; a pairwise comparator takes two items of
a modality (``--image a.png --image b.png``) and returns First / Second / Similar with
probabilities, as does an LLM-decoder model whose prompt holds ``{image_1}`` and ``{image_2}`` (each
numbered field takes one ``--image``, in order); a contrastive model returns each given modality's embedding and the cosine
similarity of every pair of them. An LLM-decoder model with a classification head returns its
label; one without (instruction-tuned) writes an answer to the prompt (``--text`` is the question),
greedy, or picks the likeliest of ``--choice`` answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


from mmtrain.data.media import MediaError, read_audio_segment, read_video_segment
from mmtrain.data.images import read_image
from mmtrain.models.processing import model_inputs
from mmtrain.engine.export import find_export

Inputs = Sequence[str] | str | None


def _prompt_slots(processor: Any) -> dict[str, int]:
    """Modality -> numbered fields of the processor's LM prompt (``{image_1}``, ``{image_2}``: 2), if any."""
    builder = getattr(processor, "prompt_builder", None)
    return {m: n for m, n in (getattr(builder, "slots", None) or {}).items() if n}


def _many(values: Inputs) -> list[str]:
    if values is None:
        return []
    return [values] if isinstance(values, str) else list(values)


def _sample(processor: Any, video: Inputs, audio: Inputs, image: Inputs, text: Inputs,
            start: float | None = None, end: float | None = None) -> dict[str, Any]:
    """Raw sample from files and text; a modality given twice becomes a list (an item pair). ``start`` /
    ``end`` (seconds) cut the video and audio files to one segment."""
    def video_of(path: str) -> Any:
        try:
            return read_video_segment(path, num_frames=processor.num_frames, start=start, end=end)
        except MediaError as err:
            if start is None and end is None:
                if "duration unknown" not in err.reason:
                    raise
                raise ValueError(f"--video {path}: its duration is unknown (a still image, or a stream without "
                                 "timing): pass the segment with --start/--end (seconds), or give a still image "
                                 "with --image.") from err
            raise ValueError(f"--video {path}: no segment [{start}, {end}) s: {err.reason}. Give --start/--end "
                             "inside the clip, or none for the whole file (a still image goes to --image).") from err

    readers = {
        "video": video_of,
        "audio": lambda path: read_audio_segment(path, start=start, end=end),
        "image": read_image,
        "text": str,
    }
    sample: dict[str, Any] = {"id": "input"}
    for modality, given in (("video", video), ("audio", audio), ("image", image), ("text", text)):
        values = [readers[modality](v) for v in _many(given)]
        if values:
            sample[modality] = values[0] if len(values) == 1 else values
    return sample


def predict(
    export_dir: str | Path,
    *,
    video: Inputs = None,
    audio: Inputs = None,
    image: Inputs = None,
    text: Inputs = None,
    choices: Sequence[str] | None = None,
    max_new_tokens: int = 16,
    start: float | None = None,
    end: float | None = None,
) -> dict[str, Any]:
    """Run one sample through the export in ``export_dir``; modalities not given are marked absent.

    ``choices`` / ``max_new_tokens``: for an instruction-tuned LLM model (see the module docstring)."""
    from transformers import AutoModel

    from mmtrain.models.registry import kind_of  # importing mmtrain.models registers the Auto classes

    folder = find_export(export_dir)
    model = AutoModel.from_pretrained(str(folder)).eval()
    kind = kind_of(model)
    processor = kind.load_processor(folder)
    asked = {"video": video, "audio": audio, "image": image, "text": text}
    foreign = [m for m, value in asked.items() if _many(value) and m not in processor.modalities]
    if foreign:  # refused before any file is decoded, never silently dropped
        raise ValueError(f"--{' / --'.join(foreign)} given, but the model has no {'/'.join(foreign)} encoder; "
                         f"it reads --{' / --'.join(processor.modalities)}.")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"--end ({end}) must be after --start ({start}).")
    if (start is not None or end is not None) and not (_many(video) or _many(audio)):
        raise ValueError("--start/--end cut --video and --audio files to one segment; neither was given.")
    sample = _sample(processor, video, audio, image, text, start, end)
    given = [m for m in processor.modalities if sample.get(m) is not None]
    if not given:
        raise ValueError(f"give at least one of --{' / --'.join(processor.modalities)} (the model's modalities).")
    pairs = [m for m in given if isinstance(sample[m], list)]
    slots = _prompt_slots(processor)
    if kind.item_pairs:
        if sorted(pairs) != sorted(given) or any(len(sample[m]) != 2 for m in given):
            raise ValueError(f"a {kind.name} model compares two items: give each modality twice, e.g. "
                             f"--{given[0]} first --{given[0]} second (got {given}).")
    else:
        for m in given:
            count, want = len(sample[m]) if m in pairs else 1, slots.get(m) or 1
            if count != want:
                raise ValueError(
                    f"--{m} was given {count} time(s); the model's prompt holds {want} {m} item(s)"
                    + (f" ({{{m}_1}}..{{{m}_{want}}}): give --{m} {want} times, in order." if want > 1 else
                       "; only pairwise models and prompts with numbered fields ({image_1}, {image_2}) take several.")
                )
    if choices and "choices" not in kind.predict_options:
        raise ValueError(f"--choice is for instruction-tuned LLM models (model=llm without a head), not {kind.name}.")
    options = {"choices": choices, "max_new_tokens": max_new_tokens}
    batch = model_inputs(processor([sample]))
    [result] = kind.predict(model, processor, batch, **{k: v for k, v in options.items() if k in kind.predict_options})
    return {**result, "modalities_used": given}

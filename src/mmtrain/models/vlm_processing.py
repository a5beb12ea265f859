"""``VLMProcessor``: raw samples -> the batch a whole vision-language model takes, through its own processor.

Samples are those of every mmtrain data format: ``image`` (one image, or a list of K for a template with
``{image_1}``..``{image_K}``), ``text``, and a class ``label`` or a ``target_text`` answer. The prompt text
of each sample comes from :class:`mmtrain.components.vlm.chat.VLMPrompt` (the model's chat template); the
model's own Hugging Face processor then preprocesses the images (its size, crop, mean/std: the
checkpoint's preprocessing, never mmtrain's) and expands each image token to the image's feature count.

Batch: ``lm_prompt_ids`` / ``lm_prompt_mask`` [B, P] (prompts, LEFT-padded: generation, answer scoring,
classification), ``lm_input_ids`` / ``lm_attention_mask`` [B, L] (prompt + answer, right-padded) and, with
answers, ``lm_labels`` [B, L] (-100 but on the answer) and ``target_texts``; the processor's image tensors
(``pixel_values``, and ``image_grid_thw`` / ``image_sizes`` where the family has them), ``image_counts``
[B] (images per sample), ``labels`` [B] with class labels, ``item_ids`` / ``item_scores`` for pairs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmtrain.components.lm.prompt import pad_rows
from mmtrain.components.paths import resolve_pretrained_path
from mmtrain.components.vlm.chat import VLMPrompt
from mmtrain.components.vlm.loading import load_vlm_processor
from mmtrain.config.plain import plain
from mmtrain.data.skips import SkippedSample
from mmtrain.models.processing import item_bookkeeping

SETTINGS_FILE = "mmtrain_vlm_processor.json"
#: Batch keys that are the processor's image tensors (passed to the model as they are).
VISION_KEYS = ("pixel_values", "image_grid_thw", "image_sizes")


class VLMProcessor:
    """Collates samples for a ``VLMModel`` (see the module docstring).

    Args:
        hf_processor: the VLM's own processor (:func:`mmtrain.components.vlm.loading.load_vlm_processor`).
        prompt: :class:`VLMPrompt` settings (``template``, ``system``, ``chat``, ``class_token``,
            ``label_answers``, ``answer_prefix``, ``max_length``).
    """

    modalities = ["image", "text"]
    num_frames = 1

    def __init__(self, hf_processor: Any, prompt: dict[str, Any]) -> None:
        self.hf = hf_processor
        self.prompt = dict(prompt)
        try:
            self.prompt_builder = VLMPrompt(hf_processor, **self.prompt)
        except TypeError as err:
            raise ValueError(f"data.processor.prompt: {err}") from err
        self.tokenizer = self.prompt_builder.tokenizer

    def model_facts(self) -> dict[str, Any]:
        """What the model must know of the prompt tokenizer."""
        facts = {"vocab_size": len(self.tokenizer), "class_token_id": self.prompt_builder.class_token_id,
                 "image_token_id": self.prompt_builder.image_token_id}
        answers = self.prompt_builder.answer_token_ids
        return facts if answers is None else {**facts, "answer_token_ids": answers}

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return self.collate(samples)

    def collate_train(self, samples: list[dict[str, Any] | SkippedSample]) -> dict[str, Any]:
        return self.collate(samples, train=True)

    def collate(self, samples: list[dict[str, Any] | SkippedSample], train: bool = False) -> dict[str, Any]:
        """Batch raw samples (``train`` changes nothing: the checkpoint's image processor has no augmentation)."""
        skipped = [s.to_record() for s in samples if isinstance(s, SkippedSample)]
        samples = [s for s in samples if not isinstance(s, SkippedSample)]
        batch: dict[str, Any] = {"ids": [str(s.get("id", i)) for i, s in enumerate(samples)], "skipped": skipped}
        if not samples:
            return batch
        builder = self.prompt_builder
        images = [builder.images_of(s) for s in samples]
        flat = [image for row in images for image in row]
        encoded = self.hf(text=[builder.render(s) for s in samples], images=flat or None, return_tensors="pt",
                          padding=True, padding_side="left")
        prompts = [row[mask.bool()].tolist() for row, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
        answers = [builder.answer_ids(s) for s in samples]
        with_answers = all(s.get("target_text") is not None for s in samples)
        over = [(s.get("id"), len(p) + len(a)) for s, p, a in zip(samples, prompts, answers) if len(p) + len(a) > builder.max_length]
        if over:
            raise ValueError(f"samples {over[:5]} (id, tokens with the images') are over the budget of {builder.max_length} "
                             "tokens (data.processor.prompt.max_length); raise it, or use smaller images or fewer.")
        pad = int(self.tokenizer.pad_token_id)
        batch["lm_prompt_ids"], batch["lm_prompt_mask"] = encoded["input_ids"], encoded["attention_mask"]
        rows = [p + (a if with_answers else []) for p, a in zip(prompts, answers)]
        batch["lm_input_ids"], batch["lm_attention_mask"] = pad_rows(rows, pad)
        if with_answers:
            labels = torch.full_like(batch["lm_input_ids"], -100)
            for i, (prompt, answer) in enumerate(zip(prompts, answers)):
                labels[i, len(prompt):len(prompt) + len(answer)] = torch.tensor(answer, dtype=torch.long)
            batch["lm_labels"] = labels
            batch["target_texts"] = [str(s["target_text"]) for s in samples]
        batch.update({key: encoded[key] for key in VISION_KEYS if key in encoded})
        batch["image_counts"] = torch.tensor([len(row) for row in images], dtype=torch.long)
        labels_given = [s.get("label") for s in samples]
        if all(isinstance(label, (int, np.integer)) for label in labels_given):
            batch["labels"] = torch.tensor([int(label) for label in labels_given], dtype=torch.long)
        batch.update(item_bookkeeping(samples))
        return batch

    def decode_labels(self, logits: torch.Tensor, id2label: dict[int, str]) -> list[str]:
        return [id2label[int(i)] for i in logits.argmax(dim=-1)]

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> list[str]:
        """The VLM's processor files (with the prompt's added tokens) plus the prompt settings; into an export's
        plain Hugging Face folder (``hf/``, written by ``VLMModel.save_pretrained``) too, so it loads on its own."""
        from mmtrain.core.integrity import update_manifest

        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(str(folder))
        (folder / SETTINGS_FILE).write_text(json.dumps({"prompt": self.prompt}, indent=1) + "\n")
        plain = folder / "hf"
        if (plain / "config.json").is_file():
            self.hf.save_pretrained(str(plain))
            update_manifest(plain)
        return [str(folder)]

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs: Any) -> VLMProcessor:
        """Load what :meth:`save_pretrained` wrote."""
        folder = Path(folder)
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        return cls(load_vlm_processor(folder, what=str(folder)), settings["prompt"])


def build_vlm_processor(*, pretrained_path: str, prompt: dict[str, Any], **image_settings: Any) -> VLMProcessor:
    """The processor of the VLM at ``pretrained_path`` (folder or Hub id: ``data.processor.pretrained_path``,
    normally ``${model.vlm.pretrained_path}``) with mmtrain's ``prompt`` settings (:class:`VLMPrompt`).

    ``image_settings``: the settings of mmtrain's own processor (:func:`mmtrain.models.processing.build_processor`:
    ``tokenizer``, ``image_size``, ``augment``...) that a data config carries; the VLM preprocesses with its
    checkpoint's own processor, so they are set aside (logged). Any other key is refused by name.
    """
    import inspect
    import logging

    from mmtrain.models.processing import build_processor

    known = set(inspect.signature(build_processor).parameters) - {"prompt"}
    unknown = sorted(set(image_settings) - known)
    if unknown:
        raise ValueError(f"data.processor: {unknown} are not settings of a VLM's processor (pretrained_path, prompt).")
    if image_settings:
        logging.getLogger(__name__).info("data.processor.%s: set aside; the VLM preprocesses with its own processor",
                                         "/".join(sorted(image_settings)))
    folder = resolve_pretrained_path(pretrained_path, what="data.processor.pretrained_path")
    if folder is None:
        raise ValueError("data.processor.pretrained_path is not set: name the VLM whose processor reads the data.")
    return VLMProcessor(load_vlm_processor(folder, what="data.processor.pretrained_path"), dict(plain(prompt)))

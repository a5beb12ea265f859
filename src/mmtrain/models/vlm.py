"""``VLMModel``: a whole pretrained vision-language model (LLaVA, Qwen2-VL... ``AutoModelForImageTextToText``)
trained through mmtrain's tasks, with its own processor and chat template (:mod:`mmtrain.models.vlm_processing`).

The same tasks as an LLM-decoder model (:mod:`mmtrain.models.llm`), the same outputs:

- classification at the answer token (``answer_token_ids``: the LM head's rows of the class names' first
  tokens at the last prompt position) or with a ``head`` on the hidden state at the class token /
  last prompt position; pairs (``{image_1}``, ``{image_2}``) also in swapped order
  (:meth:`compare_both_orders`, task=pairwise);
- instruction tuning: LM loss on the answer tokens (``lm_labels``, -100 elsewhere), greedy answers
  (the model's own ``generate``, greedy whatever its generation config says) and answers constrained to
  a set (:meth:`score_answers`).

Parts (``model.trainable``, ``task.param_groups``): ``vision_tower``, ``projector``, ``language_model``,
``lm_head`` and ``head``, whatever the family calls them. LoRA (``model.lora``) adapts the language model's
linear layers (``vision: true``: the vision tower's too); the projector trains in full beside the adapters
(peft ``modules_to_save``) unless ``model.trainable.projector=false``; ``quantize`` loads the language
model 4-bit / 8-bit (QLoRA). Export: ``config.json`` + ``model.safetensors`` (the weights outside the VLM)
and ``hf/``, the VLM (adapters merged) with its processor, which ``AutoModelForImageTextToText`` and
``AutoProcessor`` load without mmtrain; with LoRA also ``adapter/`` (peft's files, loadable with
``PeftModel.from_pretrained`` on the base VLM).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_file
from torch import nn

from mmtrain.components.lm import lora as lora_lib
from mmtrain.components.lm.decoder import head_nll
from mmtrain.components.lm.generate import _inference, gathers_parameters
from mmtrain.components.paths import resolve_pretrained_path
from mmtrain.components.vlm.loading import build_vlm
from mmtrain.config.plain import plain
from mmtrain.config.validate import injects
from mmtrain.core.integrity import update_manifest, verify_folder
from mmtrain.models.adapters import AdapterExports
from mmtrain.models.base import WEIGHTS_NAME, MultimodalPreTrainedModel, run_part
from mmtrain.models.configuration import MultimodalConfig
from mmtrain.models.llm import LLMOutput, predict_llm
from mmtrain.models.llm_readout import check_readout, class_readout
from mmtrain.models.registry import ModelKind, config_fields, register_model_kind
from mmtrain.models.vlm_processing import VISION_KEYS, VLMProcessor

HF_DIR = "hf"
#: Part name -> candidate module paths inside the VLM (the first that exists), across families.
PARTS = {
    "vision_tower": ("model.vision_tower", "model.visual", "model.vision_model"),
    "projector": ("model.multi_modal_projector", "model.visual.merger", "model.connector"),
    "language_model": ("model.language_model",),
    "lm_head": ("lm_head",),
}


class VLMConfig(MultimodalConfig):
    """Specs of a whole-VLM model.

    Args:
        vlm: ``{pretrained_path, config}``: the VLM's folder or Hub id, and config overrides (an export
            carries the full config instead).
        head: classification head on the class position's hidden state, or ``None``.
        vocab_size: the prompt tokenizer's length (a class token may have been added).
        class_token_id, image_token_id, answer_token_ids: the prompt's facts (:class:`VLMProcessor`).
        lora: ``r``, ``alpha``, ``dropout``, ``target_modules``, ``quantize``, ``vision``; or ``None``.
    """

    model_type = "mmtrain_vlm"
    spec_keys = ("vlm", "head")

    vlm: dict[str, Any] | None = None
    head: dict[str, Any] | None = None
    vocab_size: int | None = None
    class_token_id: int | None = None
    image_token_id: int | None = None
    answer_token_ids: list[int] | None = None
    lora: dict[str, Any] | None = None


class VLMModel(AdapterExports, MultimodalPreTrainedModel):
    """A Hugging Face VLM (``self.vlm``) + an optional head, with the LLM-decoder model's interface.

    Forward takes the :class:`VLMProcessor` batch: ``lm_input_ids`` / ``lm_attention_mask`` [B, L], the image
    tensors (``pixel_values``...), optionally ``labels`` [B] and ``lm_labels`` [B, L].
    """

    config_class = VLMConfig
    requires_encoders = False
    lora_module_path = "vlm"
    base_spec_key = "vlm"

    def __init__(self, config: VLMConfig) -> None:
        lora = lora_lib.lora_settings(config.lora, config.trainable, adapted="language_model", extra={"vision": False})
        super().__init__(config)
        spec = dict(config.vlm or {})
        folder = resolve_pretrained_path(spec.get("pretrained_path"), what="model.vlm.pretrained_path")
        self.vlm = run_part("model.vlm", lambda: build_vlm(spec, folder, quantize=lora and lora["quantize"]))
        own_vocab = int(self.vlm.get_input_embeddings().num_embeddings)
        if config.vocab_size and int(config.vocab_size) != own_vocab:
            if int(config.vocab_size) < own_vocab and folder is not None:
                raise ValueError(f"the processor's tokenizer has {config.vocab_size} tokens, the VLM {own_vocab}: use "
                                 "the VLM's own processor (data.processor.pretrained_path=${model.vlm.pretrained_path}).")
            self.vlm.resize_token_embeddings(int(config.vocab_size), mean_resizing=False)
        self.hidden_size = int(self.vlm.get_input_embeddings().embedding_dim)
        # families whose position ids depend on where the images are (Qwen2-VL's M-RoPE) take the token types
        self._mm_types = "mm_token_type_ids" in inspect.signature(self.vlm.model.forward).parameters
        check_readout(config)
        self.head = self.build_part("head", input_dim=self.hidden_size, num_labels=config.num_labels) if config.head else None
        self.finish_init()
        if lora:
            self._apply_lora(lora, own_vocab)

    def _apply_lora(self, lora: Mapping[str, Any], own_vocab: int) -> None:
        """LoRA on the language model (and the vision tower with ``lora.vision``); new token rows and the
        projector train beside the adapters."""
        leaves = lora["target_modules"]
        if not leaves or isinstance(leaves, str):
            raise ValueError("model.lora.target_modules: give the language model's linear layers by leaf name "
                             f"(e.g. [q_proj, v_proj]); its linear modules: {lora_lib.linear_module_names(self.part('language_model'))}.")
        scopes = [self._part_path("language_model")] + ([self._part_path("vision_tower")] if lora["vision"] else [])
        targets = rf"({'|'.join(p.replace('.', chr(92) + '.') for p in scopes)})\..*\.({'|'.join(leaves)})"
        rows = sorted(set(range(own_vocab, int(self.config.vocab_size or own_vocab)))
                      | ({int(self.config.class_token_id)} if self.config.class_token_id is not None else set()))
        projector = self._part_path("projector").rpartition(".")[2]
        keep = self.config.trainable.get("projector", True)
        lora_lib.apply_lora(self.vlm, lora, rows, targets=targets, modules_to_save=[projector] if keep else None)

    # -- parts ---------------------------------------------------------------------------------

    def _part_path(self, name: str) -> str:
        names = {n for n, _ in self.vlm.named_modules()}
        found = next((p for p in PARTS[name] if p in names), None)
        if found is None:
            raise ValueError(f"{type(self.vlm).__name__} has no {name} at any of {list(PARTS[name])}; "
                             "model.trainable / task.param_groups cannot name it.")
        return found

    def part(self, name: str) -> nn.Module:
        return self.vlm.get_submodule(self._part_path(name))

    def part_paths(self) -> dict[str, str]:
        """Part name -> module path in this model (``task.param_groups`` accepts either)."""
        return {name: f"vlm.{self._part_path(name)}" for name in PARTS}

    def components(self) -> dict[str, nn.Module]:
        parts = {name: self.part(name) for name in PARTS}
        return parts if self.head is None else {**parts, "head": self.head}

    sharded_entry_points = ("generate_answers", "score_answers")

    def shard_units(self) -> dict[str, nn.Module]:
        """The vision tower, projector and head: the language model's embedding table and LM head (often tied) stay
        in the root unit; its transformer blocks are units of their own."""
        return {name: part for name, part in self.components().items() if name not in ("language_model", "lm_head")}

    def expected_inputs(self) -> set[str]:
        return set(VISION_KEYS)

    # -- forward -------------------------------------------------------------------------------

    def vision_inputs(self, input_ids: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch's image tensors, plus ``mm_token_type_ids`` (1 at image tokens) for families whose
        position ids depend on where the images are (Qwen2-VL's M-RoPE)."""
        vision = {k: batch[k] for k in VISION_KEYS if batch.get(k) is not None}
        if vision and self._mm_types:
            vision["mm_token_type_ids"] = (input_ids == int(self.config.image_token_id)).int()
        return vision

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, **batch: Any) -> torch.Tensor:
        """The language model's last hidden states ``[B, L, E]`` with the images in place."""
        vision = self.vision_inputs(input_ids, batch)
        return self.vlm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **vision).last_hidden_state

    def forward(
        self,
        lm_input_ids: torch.Tensor,
        lm_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        lm_labels: torch.Tensor | None = None,
        **batch: Any,
    ) -> LLMOutput:
        hidden = self.hidden(lm_input_ids, lm_attention_mask, **batch)
        head = self.vlm.get_output_embeddings()
        loss = lm_loss = nll = count = None
        logits = class_readout(hidden, lm_input_ids, lm_attention_mask, config=self.config, head=self.head, lm_head=head)
        if logits is not None and labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        if lm_labels is not None:
            targets = lm_labels[:, 1:]
            scored = targets != -100
            nll = head_nll(head, hidden[:, :-1][scored], targets[scored])
            count = scored.sum()
            lm_loss = nll / count.clamp(min=1)
            loss = lm_loss if loss is None else loss + lm_loss
        return LLMOutput(loss=loss, logits=logits, lm_loss=lm_loss, hidden=hidden, lm_nll_sum=nll, lm_token_count=count)

    def check_batch(self, batch: Mapping[str, Any]) -> None:
        if batch.get("lm_input_ids") is None:
            raise ValueError("the batch has no lm_input_ids: a VLM model needs its processor (data.processor: build_vlm_processor).")
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        run_part("model.vlm", lambda: self(**inputs))

    def swapped(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """``batch`` with each sample's images in reverse order (pairs: ``(b, a)``); the prompts stay."""
        counts = batch["image_counts"]
        starts = torch.cumsum(counts, 0) - counts
        order = torch.cat([s + torch.arange(int(c) - 1, -1, -1) for s, c in zip(starts.tolist(), counts.tolist())])
        out = dict(batch)
        grid = batch.get("image_grid_thw")
        if grid is not None:  # Qwen2-VL: pixel_values holds every image's patches in a row; reorder the runs
            if not torch.equal(grid[order], grid):
                raise ValueError("compare_both_orders: the images of a sample have different sizes, so swapping them "
                                 "changes the prompt's image tokens; resize the pair's images to one size.")
            runs = torch.split(batch["pixel_values"], grid.prod(-1).tolist())
            out["pixel_values"] = torch.cat([runs[i] for i in order.tolist()])
        else:
            out["pixel_values"] = batch["pixel_values"][order]
        if batch.get("image_sizes") is not None:
            out["image_sizes"] = batch["image_sizes"][order]
        return out

    def compare_both_orders(self, **batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``[B, C]`` for the images as given and in reverse order (task=pairwise)."""
        if batch.get("image_counts") is None or bool((batch["image_counts"] < 2).any()):
            raise ValueError("compare_both_orders needs two images a sample (a prompt with {image_1}, {image_2}).")
        first = self(**batch).logits
        if first is None:
            raise ValueError("compare_both_orders needs class logits: a model.head, or data.processor.prompt.label_answers.")
        return first, self(**self.swapped(batch)).logits

    # -- generation ----------------------------------------------------------------------------

    @torch.no_grad()
    def generate_answers(self, lm_prompt_ids: torch.Tensor, lm_prompt_mask: torch.Tensor, *, max_new_tokens: int,
                         eos_token_id: int, pad_token_id: int, **batch: Any) -> torch.Tensor:
        """Greedy answers ``[B, N]`` (new tokens; eos kept, then padding) with the VLM's own ``generate``."""
        from transformers import GenerationConfig

        config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=int(max_new_tokens),
                                  eos_token_id=int(eos_token_id), pad_token_id=int(pad_token_id))
        vision = self.vision_inputs(lm_prompt_ids, batch)
        with _inference(self.vlm):
            out = self.vlm.generate(input_ids=lm_prompt_ids, attention_mask=lm_prompt_mask, generation_config=config,
                                    synced_gpus=gathers_parameters(self), **vision)
        return out[:, lm_prompt_ids.shape[1]:]

    @torch.no_grad()
    def score_answers(self, lm_prompt_ids: torch.Tensor, lm_prompt_mask: torch.Tensor, *,
                      candidates: list[list[int]], **batch: Any) -> torch.Tensor:
        """Log-probability ``[B, C]`` of each candidate answer (ids, eos included) after each prompt: one
        forward pass per candidate over prompt + candidate."""
        head = self.vlm.get_output_embeddings()
        scores = []
        with _inference(self.vlm):
            for candidate in candidates:
                cand = torch.as_tensor(candidate, dtype=torch.long, device=lm_prompt_ids.device)
                ids = torch.cat([lm_prompt_ids, cand.expand(lm_prompt_ids.shape[0], -1)], dim=1)
                mask = torch.cat([lm_prompt_mask, torch.ones_like(ids[:, lm_prompt_ids.shape[1]:])], dim=1)
                hidden = self.hidden(ids, mask, **batch)[:, lm_prompt_ids.shape[1] - 1:-1]  # predicts the candidate
                logp = torch.log_softmax(head(hidden).float(), dim=-1)
                scores.append(logp.gather(-1, cand.expand(ids.shape[0], -1)[..., None])[..., 0].sum(dim=1))
        return torch.stack(scores, dim=1)

    # -- export --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *model_args: Any, **kwargs: Any) -> VLMModel:
        """An export: the VLM from its ``hf/`` folder (weights read there), the rest from ``model.safetensors``;
        an adapter-only export through :meth:`from_adapter`."""
        folder = Path(pretrained_model_name_or_path)
        if lora_lib.is_adapter_export(folder):
            return cls.from_adapter(folder)
        if not (folder / HF_DIR / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not an exported mmtrain VLM model (no {HF_DIR}/config.json).")
        if kwargs.pop("verify", True):
            verify_folder(folder, ["config.json", WEIGHTS_NAME])
            verify_folder(folder / HF_DIR)
        config = kwargs.pop("config", None) or cls.config_class.from_pretrained(folder)
        config.vlm = {**(config.vlm or {}), "pretrained_path": str(folder / HF_DIR), "config": None}
        model = cls(config)
        missing, unexpected = load_model(model, folder / WEIGHTS_NAME, strict=False)
        missing = [k for k in missing if not k.startswith("vlm.")]
        if missing or unexpected:
            raise RuntimeError(f"{folder / WEIGHTS_NAME} does not match the model: missing {missing[:10]}, "
                               f"unexpected {unexpected[:10]}.")
        return model.eval()

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:  # type: ignore[override]
        """``config.json`` + ``model.safetensors`` (weights outside the VLM) + ``hf/`` (the VLM's own
        ``save_pretrained``); each folder's files in its ``manifest.json``."""
        if self.config.lora is not None:
            raise ValueError("save the merged model (model.merged()) or use write_export, which writes both exports.")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(folder)
        outside = {k: v.detach().contiguous().clone() for k, v in self.state_dict().items() if not k.startswith("vlm.")}
        save_file(outside, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
        update_manifest(folder, ["config.json", WEIGHTS_NAME])
        self.vlm.save_pretrained(folder / HF_DIR)
        update_manifest(folder / HF_DIR)


@injects(own=["id2label", "allowed_target_prefixes", "vocab_size", "class_token_id", "image_token_id",
              "answer_token_ids"], head=["input_dim", "num_labels"])
def build_vlm_model(
    *,
    vlm: Mapping[str, Any],
    id2label: Mapping[int, str],
    allowed_target_prefixes: Sequence[str],
    vocab_size: int,
    image_token_id: int,
    head: Mapping[str, Any] | None = None,
    class_token_id: int | None = None,
    answer_token_ids: Sequence[int] | None = None,
    trainable: Mapping[str, bool] | None = None,
    lora: Mapping[str, Any] | None = None,
    encoders: Mapping[str, Any] | None = None,
) -> VLMModel:
    """Build a whole-VLM model (see the module docstring); the prompt's facts come from :class:`VLMProcessor`.

    ``encoders`` must be empty: the VLM reads images with its own vision tower."""
    if encoders:
        raise ValueError(f"model.encoders {sorted(encoders)}: a whole VLM (model=vlm) reads images with its own vision "
                         "tower; drop the slots (model/encoders/<modality>=null).")
    parts = {"vlm": vlm, **({"head": head} if head else {})}
    return VLMModel(VLMConfig(
        **config_fields(encoders={}, id2label=id2label, allowed_target_prefixes=allowed_target_prefixes,
                        trainable=trainable, **parts),
        vocab_size=int(vocab_size), image_token_id=int(image_token_id),
        class_token_id=None if class_token_id is None else int(class_token_id),
        answer_token_ids=None if not answer_token_ids else [int(t) for t in answer_token_ids],
        lora=None if lora is None else dict(plain(lora)),
    ))


KIND = register_model_kind(ModelKind(
    name="vlm", config_class=VLMConfig, model_class=VLMModel, builder=build_vlm_model, predict=predict_llm,
    predict_options=frozenset({"choices", "max_new_tokens"}), processor=False, processor_class=VLMProcessor,
))

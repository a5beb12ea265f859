"""What the LoRA-capable kinds (an LLM model, a whole VLM) share: loading an adapter-only export and
merging the adapters into a plain copy (:mod:`mmtrain.components.lm.lora`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from mmtrain.components.lm import lora as lora_lib


class AdapterExports:
    """Mixin of a ``MultimodalPreTrainedModel`` kind with ``config.lora``.

    Class attributes: ``lora_module_path`` (the module LoRA is injected into) and ``base_spec_key`` (the
    config spec whose ``pretrained_path`` is that module's base, recorded by an adapter export).
    """

    lora_module_path: ClassVar[str]
    base_spec_key: ClassVar[str]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *model_args: Any, **kwargs: Any) -> Any:
        """As ``MultimodalPreTrainedModel.from_pretrained``; an adapter-only export (it holds
        ``adapter_config.json``) loads through :meth:`from_adapter` on the base it records."""
        if lora_lib.is_adapter_export(pretrained_model_name_or_path):
            return cls.from_adapter(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)  # type: ignore[misc]

    @classmethod
    def from_adapter(cls, folder: str | Path, base: str | Path | None = None, *, full_precision: bool = False) -> Any:
        """Load an adapter-only export (``export/adapter``, see :mod:`mmtrain.components.lm.lora`).

        Args:
            folder: the adapter export (peft adapter + the weights outside the adapted module + config).
            base: the base (folder or Hub id); default: the one recorded at export.
            full_precision: load a QLoRA adapter on the unquantized base (e.g. on CPU, or to merge).
        """
        config = lora_lib.adapter_model_config(cls.config_class, folder, base, full_precision,  # type: ignore[attr-defined]
                                               key=cls.base_spec_key)
        model = cls(config)  # type: ignore[call-arg]
        lora_lib.load_adapter_weights(model, folder)
        return model.eval()

    def merged(self) -> Any:
        """A copy with the LoRA adapters folded in (``config.lora`` ``None``): a plain export."""
        if self.config.lora is None:  # type: ignore[attr-defined]
            raise ValueError("this model has no LoRA (config.lora is None); there is nothing to merge.")
        return lora_lib.merged_copy(self)

"""Callbacks that write run artifacts: the config inside every checkpoint, the export at fit end."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

log = logging.getLogger(__name__)

CONFIG_KEY = "mmtrain_config_yaml"
LABELS_KEY = "mmtrain_label_names"


class ExportCallback(pl.Callback):
    """Embeds the run's resolved config in each checkpoint; exports the best model when fit ends.

    At fit end, the best checkpoint's weights (if a ``ModelCheckpoint`` monitored one) are loaded
    back into the model, so the export and the test run that follows use the best weights.

    Args:
        run_dir: the run directory (holds ``config.yaml``; ``export/`` is written there).
    """

    def __init__(self, *, run_dir: str) -> None:
        self.run_dir = Path(run_dir)
        self.config_yaml = ""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.config_yaml = (self.run_dir / "config.yaml").read_text()  # read once, not per checkpoint

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[CONFIG_KEY] = self.config_yaml
        checkpoint[LABELS_KEY] = list(getattr(pl_module, "label_names", []))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        sharded = is_sharded(pl_module)
        if best:
            from mmtrain.engine.callbacks.checkpoint_io import load_verified, verify_checkpoint
            from mmtrain.engine.sharded_checkpoints import is_sharded_checkpoint, load_sharded_weights
            from mmtrain.engine.sharding import load_full_state

            if is_sharded_checkpoint(best):  # every rank reads its own shards of the verified folder
                verify_checkpoint(best)
                load_sharded_weights(pl_module, Path(best))
            elif sharded:  # a full state dict into FSDP2 shards: every rank cuts its part
                load_full_state(pl_module, load_verified(best)["state_dict"])
            else:
                pl_module.load_state_dict(load_verified(best)["state_dict"])
            log.info("loaded the best checkpoint %s for export", best)
        state = None
        if sharded:  # the full weights, gathered (a collective), for the unsharded export on rank 0
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(pl_module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if trainer.is_global_zero:
            from mmtrain.engine.export import write_export

            model = pl_module.model
            if sharded:  # export an unsharded copy built from the full weights (rank 0 alone, no collective)
                from mmtrain.engine.sharding import plain_class

                model = plain_class(model)(model.config)
                model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
            write_export(model, trainer.datamodule.processor, self.run_dir / "export", config_yaml=self.config_yaml)


def is_sharded(module: Any) -> bool:
    """Whether ``module``'s parameters are FSDP2 shards (``DTensor``)."""
    from mmtrain.engine.sharding import local_shard

    return any(local_shard(p) is not p for p in module.parameters())

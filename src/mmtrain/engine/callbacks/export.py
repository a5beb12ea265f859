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
        from mmtrain.engine.strategies import full_model_state, load_best_weights

        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best:
            load_best_weights(trainer, pl_module, best)
            log.info("loaded the best checkpoint %s for export", best)
        state = full_model_state(trainer, pl_module)  # partitioned weights, gathered for rank 0's export
        if trainer.is_global_zero:
            from mmtrain.engine.export import write_export

            model = pl_module.model
            if state is not None:  # export an unsharded copy built from the full weights (rank 0 alone, no collective)
                from mmtrain.engine.sharding import plain_class

                model = plain_class(model)(model.config)
                model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
            write_export(model, trainer.datamodule.processor, self.run_dir / "export", config_yaml=self.config_yaml)

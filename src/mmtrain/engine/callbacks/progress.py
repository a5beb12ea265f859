"""The progress bar of a run: Lightning's rich bar, with each test bar named after what it tests."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class RunProgressBar(RichProgressBar):
    """:class:`~lightning.pytorch.callbacks.RichProgressBar` whose test bar says which model it scores:
    ``Testing`` for the model as trained, ``Testing (audio only)`` for ``evaluate_unimodal``'s runs with one
    modality (the task's ``only_modality``)."""

    @property
    def test_description(self) -> str:
        only = getattr(self.trainer.lightning_module, "only_modality", None)  # asked only while testing
        return f"Testing ({only} only)" if only else "Testing"

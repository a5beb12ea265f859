"""The model summary printed when a fit starts: Lightning's, without columns that say nothing.

Lightning 2.6 counts FLOPs only for a module with an ``example_input_array``; a multimodal model has
no single example input, so its summary shows a ``FLOPs`` column of zeros and "Total Flops 0" on every
run. This summary drops both when nothing was counted and keeps them when something was.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import ModelSummary
from lightning.pytorch.utilities.model_summary import get_human_readable_count

RIGHT_ALIGNED = {"Params", "Params per Device", "FLOPs", "In sizes", "Out sizes"}


def summary_columns(summary_data: list[tuple[str, list[str]]], total_flops: int) -> list[tuple[str, list[str]]]:
    """The columns worth printing: all of Lightning's, less ``FLOPs`` when no FLOPs were counted."""
    return [(name, values) for name, values in summary_data if name != "FLOPs" or total_flops > 0]


class RunModelSummary(ModelSummary):
    """:class:`~lightning.pytorch.callbacks.ModelSummary` as a rich table (Lightning's default look when
    ``rich`` is installed), without the ``FLOPs`` column and total when they would be all zero.

    ``max_depth``: module depth of the rows, from the task module (2: ``model.encoders``, ``model.fusion``,
    ``model.head``; -1: every module)."""

    @staticmethod
    def summarize(summary_data: list[tuple[str, list[str]]], total_parameters: int, trainable_parameters: int,
                  model_size: float, total_training_modes: dict[str, int], total_flops: int,
                  **summarize_kwargs: Any) -> None:
        from rich import get_console
        from rich.table import Table

        columns = summary_columns(summary_data, total_flops)
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(name, justify="right" if name in RIGHT_ALIGNED else "left",
                             style="dim" if name == " " else None, no_wrap=name == "Name")
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        totals = [("Trainable params", get_human_readable_count(int(trainable_parameters))),
                  ("Non-trainable params", get_human_readable_count(int(total_parameters - trainable_parameters))),
                  ("Total params", get_human_readable_count(int(total_parameters))),
                  ("Total estimated model params size (MB)", f"{model_size:,.3f}"),
                  ("Modules in train mode", str(total_training_modes["train"])),
                  ("Modules in eval mode", str(total_training_modes["eval"]))]
        if total_flops > 0:
            totals.append(("Total FLOPs", get_human_readable_count(int(total_flops))))
        for label, value in totals:
            console.print(f"[bold]{label}[/]: {value}", highlight=False)

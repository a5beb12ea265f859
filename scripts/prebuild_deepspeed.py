"""Compile DeepSpeed's CPU shared-memory collective now (what its first CPU run would do, ~20-50 s); nothing
without DeepSpeed or on a machine whose DeepSpeed accelerator needs no such op. Called by scripts/install.sh."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import time


def main() -> int:
    if importlib.util.find_spec("deepspeed") is None:
        return 0
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed's build chatter
        from deepspeed.accelerator import get_accelerator

        builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
        if builder is None or not builder.is_compatible():
            return 0
        builder.load()
    print(f"DeepSpeed's CPU collective ready ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``LineAppender``: the per-step log keeps one O_APPEND descriptor open, yet every line is in the file
when ``write`` returns (a kill loses nothing; a checkpoint's size is exact), and a file cut back on
resume is appended to at its new end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mmtrain.core.fileio import LineAppender, truncate


def test_lines_reach_the_file_at_once_with_the_header_once(tmp_path: Path) -> None:
    path = tmp_path / "steps.csv"
    log = LineAppender(path, header="a,b\n")
    log.write("1,2\n")
    assert path.read_text() == "a,b\n1,2\n"  # read through another descriptor, before close
    log.write("3,4\n")
    assert path.stat().st_size == len("a,b\n1,2\n3,4\n")
    log.close()
    log.write("5,6\n")  # opens again: the file exists, so no second header
    log.close()
    assert path.read_text() == "a,b\n1,2\n3,4\n5,6\n"


def test_a_file_cut_back_while_open_is_appended_to_at_its_new_end(tmp_path: Path) -> None:
    path = tmp_path / "steps.csv"
    log = LineAppender(path, header="h\n")
    for i in range(3):
        log.write(f"{i}\n")
    truncate(path, len("h\n0\n"))
    log.write("1'\n")
    log.close()
    assert path.read_text() == "h\n0\n1'\n"


def test_a_killed_writer_loses_no_written_line(tmp_path: Path) -> None:
    path = tmp_path / "steps.csv"
    script = (f"import os, sys\nfrom pathlib import Path\nfrom mmtrain.core.fileio import LineAppender\n"
              f"log = LineAppender(Path({str(path)!r}), header='h\\n')\n"
              "for i in range(100):\n    log.write(f'{i}\\n')\n"
              "os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ}, timeout=60)
    assert proc.returncode == -9
    assert path.read_text().splitlines() == ["h", *map(str, range(100))]

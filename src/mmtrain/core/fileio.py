"""Run-directory file writes that a crash cannot leave half done.

* :func:`atomic_write_bytes`: a temporary file beside the target, then ``os.replace`` (with
  ``durable=True`` also fsync of the file and its folder: checkpoints and their manifest).
* :func:`replace_path` / :func:`remove_path` / :func:`remove_stale_temporaries`: a file or a folder (a sharded
  checkpoint) swapped in, removed, and the temporaries of writes a crash cut short cleared.
* :func:`append_line` / :class:`LineAppender` / :func:`truncate`: append-only logs (``train_steps.csv``,
  ``skipped.jsonl``) written one ``O_APPEND`` write at a time and cut back to a checkpoint's length on
  resume.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: In temporary file names: which host and process is writing (stale ones can be told apart).
OWNER = f"{socket.gethostname().replace('.', '_')}-{{pid}}"


EXIT_WRITE_ERROR = 74  # the exit status when a run file cannot be written (EX_IOERR)


class RunWriteError(OSError):
    """A file of the run directory could not be written: the message names the path, the cause and
    what to do (``mmtrain`` exits with :data:`EXIT_WRITE_ERROR`)."""

    def __init__(self, path: str | Path, cause: OSError, *, what: str = "run directory", kept: str = "") -> None:
        code = cause.errno or errno.EIO
        if code in (errno.ENOSPC, errno.EDQUOT):
            advice = f"free disk space (df -h {Path(path).parent}) or choose another run_dir="
        elif code == errno.EFBIG:
            advice = "the file exceeds the file-size limit (ulimit -f); raise it, free space or choose another run_dir="
        else:
            advice = "the directory is not writable" if code in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                errno.ENOENT, errno.EEXIST) else "check the disk, free space"
            advice += "; choose another run_dir= on a writable disk"
        super().__init__(code, f"could not write {what} {path}: {cause.strerror or cause} "
                               f"({errno.errorcode.get(code, code)}); {advice}." + (f" {kept}" if kept else ""))
        self.path = Path(path)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def temporary_beside(target: Path) -> tuple[int, str]:
    """A temporary file beside ``target`` (named after host + pid), with the mode ``open`` would give."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{OWNER.format(pid=os.getpid())}.", suffix=".tmp",
                               dir=target.parent)
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666 & ~_umask())
    return fd, tmp


def temporary_folder_beside(target: Path) -> Path:
    """A new folder beside ``target`` named like the temporary files (cleared once its writer is gone), with the
    mode ``mkdir`` would give (``mkdtemp``'s 0700 would hide it from the user's group)."""
    folder = tempfile.mkdtemp(prefix=f".{target.name}.{OWNER.format(pid=os.getpid())}.", suffix=".tmp",
                              dir=target.parent)
    os.chmod(folder, 0o777 & ~_umask())
    return Path(folder)


def atomic_write_bytes(target: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace ``target`` with ``data`` in one rename: readers see the old file or the new one, never
    a part. ``durable``: fsync the file before and the folder after the rename (survives power loss)."""
    fd, tmp = temporary_beside(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, target)
        tmp = ""
        if durable:
            fsync_dir(target.parent)
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


class LineAppender:
    """Appends lines to ``path`` (``header`` first if the file is new) through one ``O_APPEND``
    descriptor that stays open from the first line to :meth:`close`: for a file written every step,
    one ``write`` call a line instead of stat, open, write and close (:func:`append_line`).

    Each line is one ``O_APPEND`` write that reaches the file before :meth:`write` returns: lines from
    several processes never interleave, a kill right after it loses nothing, and the file's size is
    always that of the lines written.
    """

    def __init__(self, path: Path, header: str = "") -> None:
        self.path, self.header = path, header
        self._fd: int | None = None

    def write(self, line: str) -> None:
        if self._fd is None:
            new = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            line = (self.header if new else "") + line
        os.write(self._fd, line.encode())

    def close(self) -> None:
        """Closes the descriptor (the next :meth:`write` opens the file again)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def append_line(path: Path, line: str, header: str = "") -> None:
    """One line through a :class:`LineAppender` opened and closed for it."""
    appender = LineAppender(path, header)
    try:
        appender.write(line)
    finally:
        appender.close()


def truncate(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (lines written after a checkpoint); absent files are left."""
    if path.exists() and path.stat().st_size > size:
        with open(path, "r+b") as handle:
            handle.truncate(size)


def build_stamped_folder(folder: Path, write: Callable[[Path], None], stamp: dict[str, Any], stamp_file: str) -> Path:
    """``folder`` built by ``write(<empty folder>)`` unless it already holds ``stamp`` in ``stamp_file``.

    The folder is written beside its target and renamed into place, so concurrent processes never see a
    half-written one; a folder with another stamp (an older builder or source) is replaced.
    """
    import json
    import shutil

    def built() -> bool:
        try:
            return json.loads((folder / stamp_file).read_text()) == stamp
        except (OSError, ValueError):
            return False

    if built():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(staging)
        (staging / stamp_file).write_text(json.dumps(stamp, indent=1) + "\n")
        if folder.exists() and not built():
            shutil.rmtree(folder, ignore_errors=True)  # stale
        try:
            staging.rename(folder)
        except OSError:
            if not built():  # not another process winning the race
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def replace_path(source: Path, target: Path) -> None:
    """Rename ``source`` (a file, or a folder) to ``target``, replacing it; a folder in the way is renamed aside
    first and removed after (rename cannot replace a non-empty folder)."""
    if source.is_dir() and target.is_dir() and not target.is_symlink():
        aside = target.with_name(f".{target.name}.{OWNER.format(pid=os.getpid())}.replaced.tmp")
        os.replace(target, aside)
        os.replace(source, target)
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.replace(source, target)


def remove_path(path: Path) -> None:
    """Remove a checkpoint file or folder; nothing if it is gone already."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(directory: Path) -> None:
    """Temporary files (and sharded checkpoints' folders) of saves a crash cut short: this host's, of processes
    that no longer exist."""
    for stale in directory.glob(".*.tmp"):
        owner = stale.name[:-4].rsplit(".", 2)[-2]
        pid = owner.rpartition("-")[2]
        if owner != OWNER.format(pid=pid) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)  # ProcessLookupError once that process is gone
        except ProcessLookupError:
            remove_path(stale)
        except OSError:
            continue

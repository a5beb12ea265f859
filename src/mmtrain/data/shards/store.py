"""Byte ranges of the files in one place: a local folder, or a URL read through ``fsspec`` (``https://`` with
aiohttp, ``s3://`` with s3fs, ``gs://`` with gcsfs...: whichever fsspec filesystem the scheme names).

Every read is one ranged request (``cat_file(path, start, end)``), retried a few times on a transport error; a
missing file, a short answer (a server that ignored the range, a truncated shard) or a read that keeps failing is a
:class:`~mmtrain.data.shards.layout.ShardError` naming the location and the file. The filesystem object is built
lazily in each process (DataLoader workers included), never pickled.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmtrain.data.shards.layout import ShardError, check_name


class Store:
    """The files under ``location``, read by name (plain file names only, so reads stay under it).

    Args:
        location: a local folder, or a URL whose scheme fsspec knows (``https://host/data/train``,
            ``s3://bucket/prefix``).
        storage_options: keyword arguments for the fsspec filesystem (``endpoint_url``, ``anon``, ``key``...);
            credentials are better left to the environment (``AWS_ACCESS_KEY_ID``...).
        retries: attempts per read before a transport error stops the run.
    """

    def __init__(self, location: str, *, storage_options: Mapping[str, Any] | None = None, retries: int = 3) -> None:
        text = str(location)
        self.remote = "://" in text and not text.startswith("file://")
        self.location = text.rstrip("/") if self.remote else str(Path(text.removeprefix("file://")).expanduser())
        self.storage_options = dict(storage_options or {})
        self.retries = max(1, int(retries))
        self._fs: tuple[int, Any, str] | None = None
        if not self.remote and not Path(self.location).is_dir():
            raise ShardError(f"shards {self.location}: no such folder (write one with `mmtrain data pack`)")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None}  # each process opens its own

    def _filesystem(self) -> tuple[Any, str]:
        if self._fs is None or self._fs[0] != os.getpid():
            import fsspec

            try:
                fs, path = fsspec.core.url_to_fs(self.location, **self.storage_options)
            except (ImportError, ValueError) as err:
                raise ShardError(f"shards {self.location}: no filesystem for this URL ({err}); "
                                 "`pip install mmtrain[shards]` brings http and s3") from err
            self._fs = (os.getpid(), fs, path.rstrip("/"))
        return self._fs[1], self._fs[2]

    def read(self, name: str, start: int | None = None, length: int | None = None) -> bytes:
        """Bytes ``[start, start + length)`` of file ``name`` (the whole file without ``start``)."""
        check_name(name, f"shards {self.location}")
        end = None if start is None or length is None else start + length
        if not self.remote:
            return self._read_local(name, start, length)
        fs, base = self._filesystem()
        error: Exception | None = None
        for attempt in range(self.retries):
            try:
                data = fs.cat_file(f"{base}/{name}", start=start, end=end)
                break
            except FileNotFoundError as err:
                raise ShardError(f"shards {self.location}: {name} not found ({err})") from err
            except Exception as err:  # transport errors of any fsspec backend (aiohttp, botocore...)
                error = err
                time.sleep(0.2 * 2**attempt)
        else:
            raise ShardError(f"shards {self.location}: reading {name} failed {self.retries} times "
                             f"({type(error).__name__}: {error})") from error
        if length is not None and len(data) != length:
            raise ShardError(f"shards {self.location}: {name} gave {len(data)} bytes at offset {start}, not {length} "
                             "(a truncated shard, or a server that ignores range requests)")
        return data

    def _read_local(self, name: str, start: int | None, length: int | None) -> bytes:
        path = Path(self.location) / name
        try:
            with open(path, "rb") as handle:
                if start is None:
                    return handle.read()
                handle.seek(start)
                data = handle.read(length)
        except FileNotFoundError as err:
            raise ShardError(f"shards {self.location}: {name} not found") from err
        except OSError as err:
            raise ShardError(f"shards {self.location}: cannot read {name}: {err}") from err
        if length is not None and len(data) != length:
            raise ShardError(f"shards {self.location}: {name} ends before byte {start + length} "
                             f"(got {len(data)} of {length} bytes at offset {start}): a truncated shard")
        return data

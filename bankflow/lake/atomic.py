"""All-or-nothing, durable writes of one object into the lake: Parquet files and dead-letter files alike."""

from __future__ import annotations

import os
import uuid
from typing import Any


def _is_local(fs: Any) -> bool:
    protocol = getattr(fs, "protocol", "")
    protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
    return "file" in protocols or "local" in protocols


def put_atomic(fs: Any, path: str, data: bytes) -> None:
    """Make `path` hold exactly `data`, all or nothing, durable when this returns.

    Locally a temp file in the same directory is fsynced and renamed over the key (and the directory fsynced);
    on S3 one PUT is atomic. A reader never sees half a file.
    """
    if not _is_local(fs):
        fs.pipe_file(path, data)
        return
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_json(fs: Any, path: str) -> Any:
    """The JSON object a marker or state file holds (written by `put_atomic`), or None when there is none."""
    import orjson

    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        return orjson.loads(handle.read())

"""Result files written whole or not at all.

A run is judged finished by its metrics.json (`protocol.is_finished`), and a finished run re-reports (rewrites its
metrics and predictions) when its command is run again: a file written in place and cut by a kill would count as
finished but not load, and the fold would never be trained again. Each file here goes to a temporary name in the
same folder first and is renamed over the old one (atomic on POSIX), so a reader sees the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Iterator


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[IO[Any]]:
  """`open(path, mode)` for writing ('w' or 'wb'), renamed over `path` only when the block ends without an error;
  on an error the temporary file is removed and `path` keeps what it held."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open: mode {mode!r} is not 'w' or 'wb'")
  path = os.fspath(path)
  tmp = f"{path}.tmp{os.getpid()}"  # one per process: processes sharing a folder never write one temporary file
  try:
    with open(tmp, mode) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> None:
  """Writes `obj` as JSON to `path` atomically, creating its folder."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with atomic_open(path) as f:
    json.dump(obj, f, indent=indent)

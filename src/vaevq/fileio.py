"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file under the real name."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, fsync, then rename over ``path`` (same folder, same filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) or _write_failure(err):
            code = getattr(err, "errno", None) or errno.EIO
            reason = getattr(err, "strerror", None) or "the write failed (is the disk full?)"
            raise OSError(code, f"{reason} while writing {path}; {path.name} was not replaced") from None
        raise


def _write_failure(err: BaseException) -> bool:
    """torch.save reports a failed write (a full disk) as a RuntimeError of its zip writer."""
    return isinstance(err, RuntimeError) and any(
        m in str(err) for m in ("inline_container", "unexpected pos", "PytorchStreamWriter", "file write failed"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def json_safe(obj):
    """``obj`` with every non-finite float (NaN, inf) replaced by None: JSON has no NaN, and a file
    holding one is not valid JSON for other readers. Lists, tuples and dicts are walked."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def nonfinite_keys(obj, prefix: str = "") -> list[str]:
    """The keys (dotted) of ``obj`` whose values are non-finite floats."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [prefix or "value"]
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in nonfinite_keys(v, f"{prefix}.{key}" if prefix else str(key))]
    return []


def dumps(obj, **kwargs) -> str:
    """``json.dumps`` of :func:`json_safe` (never NaN)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def append_line(path: str | Path, text: str) -> None:
    """Append one whole line: if the write fails (a full disk), the file is cut back to where it
    was, so a log never ends in half a record written by us."""
    data = (text.rstrip("\n") + "\n").encode()
    with open(path, "ab") as fh:
        start = fh.tell()
        try:
            fh.write(data)
            fh.flush()
        except OSError:
            fh.truncate(start)
            raise


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file. A torn last line (a write cut short by a crash or a full
    disk before whole-line appends) is reported on stderr with the file name and dropped; a bad
    line elsewhere is an error naming the file and the line."""
    path = Path(path)
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                print(f"[vaevq] {path}: dropped a torn last line ({len(line)} characters: {err.msg}); "
                      "it was being written when the run stopped", file=sys.stderr)
                break
            raise ValueError(f"{path}, line {i + 1}: not valid JSON ({err.msg})") from None
    return records

"""The run directory: every path of a run, in one place.

    RUN/config.yaml          the settings of the run (what `--resume` continues)
    RUN/log.jsonl            one JSON record per line (losses, evaluations, data problems)
    RUN/split.json           brain MRI: the subjects of each split (written once, reused)
    RUN/excluded.json        image folders: the unreadable files left out at the start (reused)
    RUN/images/stepNNNNNNN.png   periodic reconstruction grids
    RUN/checkpoints/last.pt, best.pt   resume checkpoints
    RUN/model/               the final model (save_pretrained: config.yaml + model.safetensors)
    RUN/eval/                `vaevq eval`: metrics.json, report.md, report.html
    RUN/compare.json         `vaevq compare`: the finished run's result
    RUN/.lock                held while a process trains into the run (its pid and host)

Every module that reads or writes a run's files asks a :class:`RunDir` for the path.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

CONFIG = "config.yaml"
LOG = "log.jsonl"
SPLIT = "split.json"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
MODEL = "model"
WEIGHTS = "model.safetensors"
LOCK = ".lock"


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def log(self) -> Path:
        return self.root / LOG

    @property
    def split(self) -> Path:
        return self.root / SPLIT

    @property
    def excluded(self) -> Path:
        return self.root / "excluded.json"

    @property
    def images(self) -> Path:
        return self.root / "images"

    def image(self, step: int) -> Path:
        return self.images / f"step{step:07d}.png"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    def checkpoint(self, which: str = "last") -> Path:
        """``last`` or ``best`` (or a file name inside checkpoints/)."""
        name = {"last": LAST, "best": BEST}.get(which, which)
        return self.checkpoints / name

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    def has_checkpoint(self) -> bool:
        return self.last.is_file()

    @property
    def model(self) -> Path:
        return self.root / MODEL

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def compare_marker(self) -> Path:
        return self.root / "compare.json"

    def mkdir(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of(cls, path: str | Path) -> RunDir:
        """Where a checkpoint's outputs go: the run folder of a checkpoint inside RUN/checkpoints/,
        the folder of a loose .pt file, or the folder itself (a run, or a save_pretrained folder)."""
        path = Path(path)
        if path.is_file():
            parent = path.parent
            return cls(parent.parent if parent.name == CHECKPOINTS else parent)
        return cls(path)

    def split_dir(self) -> Path:
        """Where the run's split.json is (a save_pretrained folder inside a run: one level up)."""
        if not self.split.is_file() and (self.root.parent / SPLIT).is_file():
            return self.root.parent
        return self.root

    # ------------------------------------------------------------------ one writer at a time

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK

    def acquire(self) -> str | None:
        """Take the run's lock (a file holding this process's pid and host). A lock left by a
        process of this host that no longer runs is stale: it is replaced and a note returned. A
        live holder (or one on another host) refuses with a ValueError naming it."""
        self.mkdir()
        me = f"{os.getpid()} {socket.gethostname()}"
        note = None
        for _ in range(3):
            try:
                fd = os.open(self.lock_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid, host = _holder(self.lock_file)
                if host == socket.gethostname() and pid is not None and not _alive(pid):
                    self.lock_file.unlink(missing_ok=True)
                    note = f"removed the stale lock of process {pid} (no longer running): {self.lock_file}"
                    continue
                raise ValueError(f"{self.root} is in use: process {pid} on {host} is training into it (lock "
                                 f"{self.lock_file}); wait for it to finish, or delete the lock file if that "
                                 "process is gone") from None
            with os.fdopen(fd, "w") as fh:
                fh.write(me + "\n")
            return note
        raise ValueError(f"could not take the lock {self.lock_file}")

    def release(self) -> None:
        """Drop the lock if this process holds it."""
        pid, host = _holder(self.lock_file)
        if pid == os.getpid() and host == socket.gethostname():
            self.lock_file.unlink(missing_ok=True)

    def clean_temporary(self) -> list[Path]:
        """Remove what an interrupted atomic write left (``.NAME.XXXX.tmp`` beside its target) in
        the run folder, checkpoints/ and model/; returns the removed paths. Call with the lock held."""
        removed = []
        for folder in (self.root, self.checkpoints, self.model):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    if tmp.is_file():
                        tmp.unlink(missing_ok=True)
                        removed.append(tmp)
        return removed


def _holder(lock: Path) -> tuple[int | None, str | None]:
    try:
        parts = lock.read_text().split()
    except OSError:
        return None, None
    try:
        return int(parts[0]), (parts[1] if len(parts) > 1 else None)
    except (IndexError, ValueError):
        return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""The run directory: every path of a run, in one place.

    RUN/config.yaml          the settings of the run (what `--resume` continues)
    RUN/log.jsonl            one JSON record per line (losses, evaluations, data problems)
    RUN/split.json           brain MRI: the subjects of each split (written once, reused)
    RUN/images/stepNNNNNNN.png   periodic reconstruction grids
    RUN/checkpoints/last.pt, best.pt   resume checkpoints
    RUN/model/               the final model (save_pretrained: config.yaml + model.safetensors)
    RUN/eval/                `vaevq eval`: metrics.json, report.md, report.html
    RUN/compare.json         `vaevq compare`: the finished run's result

Every module that reads or writes a run's files asks a :class:`RunDir` for the path.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.yaml"
LOG = "log.jsonl"
SPLIT = "split.json"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
MODEL = "model"
WEIGHTS = "model.safetensors"


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

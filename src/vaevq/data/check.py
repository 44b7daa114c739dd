"""``vaevq data check``: read a config's data without training; count it and list every problem."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaevq.config import Config
from vaevq.data.brats import DataProblem, build_brain_datasets
from vaevq.data.datasets import BuiltinPhotos, image_folder_splits
from vaevq.data.transforms import ImageReadError, load_rgb, shown


@dataclass
class SplitReport:
    name: str
    units: str  # "subjects" or "images"
    count: int  # subjects (including skipped ones) or images
    items: int  # slices (brain) or images
    skipped: list[str] = field(default_factory=list)


@dataclass
class DataReport:
    splits: list[SplitReport]
    problems: list[DataProblem]
    notes: list[str]
    fatal: bool  # problems found and data.on_error=stop

    def lines(self) -> list[str]:
        out = [f"[vaevq] {note}" for note in self.notes]
        for s in self.splits:
            if s.units == "subjects":
                out.append(f"{s.name:<5}  {s.count} subjects ({len(s.skipped)} skipped), {s.items} slices")
            else:
                out.append(f"{s.name:<5}  {s.count} images")
        if self.problems:
            out.append(f"{len(self.problems)} problem(s):")
            out += [f"  {p}" for p in self.problems]
        else:
            out.append("no problems found")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"splits": [dataclasses.asdict(s) for s in self.splits],
                "problems": [p.to_dict() for p in self.problems], "notes": self.notes, "fatal": self.fatal}


def _check_image(path: Path) -> str | None:
    """None, or why the file cannot be used (decoded in full as training reads it)."""
    try:
        load_rgb(path)
    except ImageReadError as err:
        return f"cannot read image: {err.reason}"
    return None


def check_data(config: Config, run_dir: str | Path | None = None, progress: bool = False) -> DataReport:
    d = config.data
    stop = d.on_error == "stop"
    if d.is_brain:

        collect = dataclasses.replace(config, data=dataclasses.replace(d, on_error="skip"))
        train, held = build_brain_datasets(collect, run_dir, progress, allow_empty=True)
        splits = [SplitReport(name, "subjects", len(ds.subjects) + len(ds.skipped), len(ds), ds.skipped)
                  for name, ds in (("train", train), ("eval", held))]
        problems = train.problems + held.problems
        notes = list(train.notes)
        empty = [s.name for s in splits if s.items == 0]
        if empty:
            notes.append(f"no usable {' or '.join(empty)} subject: training cannot start")
        return DataReport(splits, problems, notes, (bool(problems) and stop) or bool(empty))
    if d.source == "builtin":

        splits = [SplitReport(n, "images", len(BuiltinPhotos(n, d.resolution)), 0) for n in ("train", "eval")]
        for s in splits:
            s.items = s.count
        return DataReport(splits, [], ["built-in photos (scikit-image, scikit-learn)"], False)
    from tqdm.auto import tqdm


    links: list = []
    train_files, eval_files = image_folder_splits(d.root, d.eval_fraction, links)
    problems = [DataProblem(p.parent.name, shown(p), reason) for p, reason in links]
    for path in tqdm(train_files + eval_files, desc="images", disable=not progress, leave=False):
        message = _check_image(path)
        if message:
            problems.append(DataProblem(path.parent.name, shown(path), message))
    splits = [SplitReport("train", "images", len(train_files), len(train_files)),
              SplitReport("eval", "images", len(eval_files), len(eval_files))]
    return DataReport(splits, problems, [f"data.root {d.root}"], bool(problems) and stop)

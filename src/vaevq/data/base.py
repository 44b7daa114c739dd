"""What every vaevq dataset declares besides its items."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset


class DescribedDataset(Dataset):
    """A dataset with its notes (printed when a run starts), its data problems (found and left
    out), the names of skipped subjects, and the split it belongs to (brain MRI: the subjects of
    each split, written to the run's split.json), as fields."""

    def __init__(self, notes: list[str] | None = None, problems: list[Any] | None = None,
                 skipped: list[str] | None = None, split: dict[str, Any] | None = None):
        self.notes: list[str] = list(notes or [])
        self.problems: list[Any] = list(problems or [])
        self.skipped: list[str] = list(skipped or [])
        self.split: dict[str, Any] | None = split

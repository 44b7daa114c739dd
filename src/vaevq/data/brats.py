"""Brain MRI: BraTS-layout NIfTI volumes -> normalised axial slices, cached as memory-mapped arrays.

A BraTS root holds one folder per subject: ``BraTS-GLI-00005-100/BraTS-GLI-00005-100-t1n.nii.gz``
(BraTS 2023/2024 names: t1n, t1c, t2w, t2f, seg) or BraTS 2021's ``..._t1``, ``_t1ce``, ``_t2``,
``_flair``. Per subject, with ``vaevq.config.DataConfig``'s settings:

1. each requested contrast is read with nibabel and reoriented to RAS (``as_closest_canonical``),
   so the third axis is inferior -> superior and "axial" means the same for every file;
2. the brain is the voxels that are non-zero in any contrast (BraTS volumes are skull-stripped);
3. per volume, intensities are clipped to percentiles (``data.clip_percentiles``) of its brain
   voxels and scaled to [-1, 1]; the background is -1;
4. axial slices with fewer than ``data.min_brain_fraction`` brain pixels are skipped;
5. each slice is shown anterior up, the subject's left on the image's left (``np.rot90`` of the
   RAS x-y plane), padded to a square with the background value, and resized to the resolution
   (bilinear, antialiased);
6. the slices of a subject are stored once in a cache as ``(n, C, R, R)`` float16, keyed by the
   source files (path, size, modification time) and the settings above; a change of either
   gives a new key and the subject is prepared again.

Problems (a missing contrast, volumes of different shapes, an unreadable or truncated file, an
all-zero volume, ...) are collected as :class:`DataProblem` with the file they concern.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vaevq.config import ConfigError, DataConfig
from vaevq.data.base import DescribedDataset
from vaevq.data.brain import COLIN27, builtin_brain_root, colin27_path
from vaevq.distributed import barrier
from vaevq.fileio import atomic_write, atomic_write_text

# BraTS 2021 file names of the same contrasts
LEGACY_NAMES = {"t1n": "t1", "t1c": "t1ce", "t2w": "t2", "t2f": "flair"}
NIFTI_SUFFIXES = (".nii.gz", ".nii")
CACHE_VERSION = 1


class DataError(ConfigError):
    """Data that cannot be used; the message names every file concerned."""


@dataclass(frozen=True)
class DataProblem:
    subject: str
    file: str
    message: str
    transient: bool = False  # an I/O or memory error, not the file's content: never cached

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        return {"subject": self.subject, "file": self.file, "message": self.message}


class TransientReadError(ValueError):
    """Reading failed for a reason outside the file's content (permissions, I/O, memory)."""


@dataclass
class Subject:
    """One subject: its name and, per contrast, a file (``None`` where none was found)."""

    name: str
    folder: Path
    files: dict[str, Path | None] = field(default_factory=dict)


@dataclass
class PreparedSubject:
    name: str
    array_path: Path  # (n, C, R, R) float16 .npy
    slices: list[int]  # RAS axial index of each stored slice
    contrasts: tuple[str, ...]


@dataclass(frozen=True)
class SliceSettings:
    contrasts: tuple[str, ...]
    resolution: int
    min_brain_fraction: float
    clip_percentiles: tuple[float, float]

    @classmethod
    def from_config(cls, d: DataConfig) -> SliceSettings:
        return cls(tuple(d.contrasts), d.resolution, d.min_brain_fraction, tuple(d.clip_percentiles))

    def to_dict(self) -> dict[str, Any]:
        return {"contrasts": list(self.contrasts), "resolution": self.resolution,
                "min_brain_fraction": self.min_brain_fraction,
                "clip_percentiles": list(self.clip_percentiles)}


# ---------------------------------------------------------------- finding files


def _is_nifti(path: Path) -> bool:
    return path.name.endswith(NIFTI_SUFFIXES)


def contrast_file(folder: Path, subject: str, contrast: str) -> Path | None:
    """The file of ``contrast`` in a subject folder: BraTS 2023/24 ``{subject}-{c}.nii.gz``, or
    BraTS 2021 ``{subject}_{t1,t1ce,t2,flair}.nii.gz`` (also ``.nii``, also under another prefix)."""
    legacy = LEGACY_NAMES.get(contrast)
    candidates = [f"{subject}-{contrast}", f"{subject}_{contrast}"]
    if legacy:
        candidates.append(f"{subject}_{legacy}")
    for stem in candidates:
        for suffix in NIFTI_SUFFIXES:
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    tags = [contrast] + ([legacy] if legacy else [])
    pattern = re.compile(r"[-_](" + "|".join(map(re.escape, tags)) + r")\.nii(\.gz)?$")
    matches = sorted(p for p in folder.iterdir() if p.is_file() and pattern.search(p.name))
    return matches[0] if matches else None


def find_subjects(root: str | Path, contrasts: tuple[str, ...]) -> list[Subject]:
    """Every folder under ``root`` (one level) that holds NIfTI files, sorted by name."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data.root {root} does not exist or is not a folder")
    subjects = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not any(_is_nifti(f) for f in folder.iterdir()):
            continue
        files = {c: contrast_file(folder, folder.name, c) for c in contrasts}
        subjects.append(Subject(folder.name, folder, files))
    if not subjects:
        raise ConfigError(f"data.root {root} has no subject folders with NIfTI files (.nii.gz); "
                          "expected BraTS layout: ROOT/BraTS-GLI-00005-100/BraTS-GLI-00005-100-t1n.nii.gz")
    return subjects


# ---------------------------------------------------------------- reading and slicing


def load_ras(path: Path) -> np.ndarray:
    """A 3D NIfTI volume reoriented to RAS, float32. Raises ValueError naming the problem."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        image = nib.as_closest_canonical(image)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except MemoryError as err:
        raise TransientReadError(f"cannot read (out of memory: {err})") from None
    except OSError as err:
        if err.errno is not None:  # EACCES, EIO, ...: the system, not the file's content
            raise TransientReadError(f"cannot read ({type(err).__name__}: {err})") from None
        raise ValueError(f"cannot read as NIfTI ({type(err).__name__}: {err})") from None
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for bad files
        raise ValueError(f"cannot read as NIfTI ({type(err).__name__}: {err})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("contains NaN or infinite values")
    return data


def normalize_volume(volume: np.ndarray, brain: np.ndarray,
                     percentiles: tuple[float, float]) -> np.ndarray:
    """Clip to the percentiles of the brain voxels, scale to [-1, 1]; background -> -1."""
    lo, hi = np.percentile(volume[brain], percentiles)
    if not hi > lo:
        raise ValueError(f"brain intensities are constant between percentiles {list(percentiles)} "
                         f"({lo:g}); nothing to normalise")
    out = np.clip((volume - lo) / (hi - lo), 0.0, 1.0) * 2.0 - 1.0
    out[~brain] = -1.0
    return out.astype(np.float32)


def square_resize(slices: np.ndarray, resolution: int) -> np.ndarray:
    """(n, C, h, w) -> (n, C, R, R): pad the shorter side (centred, with -1), then resize."""
    n, c, h, w = slices.shape
    size = max(h, w)
    top, left = (size - h) // 2, (size - w) // 2
    padded = np.full((n, c, size, size), -1.0, dtype=np.float32)
    padded[:, :, top:top + h, left:left + w] = slices
    if size == resolution:
        return padded
    tensor = torch.from_numpy(padded)
    out = F.interpolate(tensor, size=(resolution, resolution), mode="bilinear", align_corners=False,
                        antialias=size > resolution)
    return out.clamp_(-1.0, 1.0).numpy()


def slice_subject(subject: Subject, settings: SliceSettings) -> tuple[np.ndarray, list[int]]:
    """All kept axial slices of one subject, (n, C, R, R) float32 in [-1, 1], and their indices.
    Raises :class:`SubjectProblems` naming every bad file."""
    problems: list[DataProblem] = []
    volumes: dict[str, np.ndarray] = {}
    for contrast in settings.contrasts:
        path = subject.files.get(contrast)
        if path is None:
            legacy = LEGACY_NAMES.get(contrast)
            also = f" (or {subject.name}_{legacy}.nii.gz)" if legacy else ""
            problems.append(DataProblem(subject.name, str(subject.folder / f"{subject.name}-{contrast}.nii.gz"),
                                        f"missing contrast {contrast}{also}"))
            continue
        try:
            volume = load_ras(path)
        except ValueError as err:
            problems.append(DataProblem(subject.name, str(path), str(err),
                                        transient=isinstance(err, TransientReadError)))
            continue
        if not np.any(volume):
            problems.append(DataProblem(subject.name, str(path), "all-zero volume"))
            continue
        volumes[contrast] = volume
    shapes = {c: v.shape for c, v in volumes.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{subject.files[c].name} {list(s)}" for c, s in shapes.items())
        problems.append(DataProblem(subject.name, str(subject.folder),
                                    f"volumes of different shapes: {listing}"))
    if problems:
        raise SubjectProblems(problems)
    brain = np.zeros(next(iter(volumes.values())).shape, dtype=bool)
    for volume in volumes.values():
        brain |= volume != 0
    normalized = []
    for contrast in settings.contrasts:
        try:
            normalized.append(normalize_volume(volumes[contrast], brain, settings.clip_percentiles))
        except ValueError as err:
            problems.append(DataProblem(subject.name, str(subject.files[contrast]), str(err)))
    if problems:
        raise SubjectProblems(problems)
    stacked = np.stack(normalized)  # (C, X, Y, Z) in RAS
    fraction = brain.mean(axis=(0, 1))  # per axial slice
    keep = [int(k) for k in np.nonzero(fraction >= settings.min_brain_fraction)[0]]
    if not keep:
        raise SubjectProblems([DataProblem(
            subject.name, str(subject.files[settings.contrasts[0]]),
            f"no axial slice has at least {settings.min_brain_fraction:g} brain voxels "
            f"(largest fraction {fraction.max():.3g}); lower data.min_brain_fraction")])
    # (C, X, Y, n) -> (n, C, Y, X) with rows anterior -> posterior, columns left -> right
    planes = np.rot90(stacked[:, :, :, keep], k=1, axes=(1, 2))  # (C, Y', X, n)
    planes = np.ascontiguousarray(planes.transpose(3, 0, 1, 2))
    return square_resize(planes, settings.resolution), keep


class SubjectProblems(Exception):
    def __init__(self, problems: list[DataProblem]):
        super().__init__("; ".join(map(str, problems)))
        self.problems = problems


# ---------------------------------------------------------------- the cache


def default_cache_dir() -> Path:
    env = os.environ.get("VAEVQ_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vaevq"


def cache_root(d: DataConfig) -> Path:
    return Path(d.cache_dir).expanduser() if d.cache_dir else default_cache_dir() / "slices"


def subject_key(subject: Subject, settings: SliceSettings) -> str:
    sources = []
    for contrast in settings.contrasts:
        path = subject.files.get(contrast)
        if path is None:
            sources.append([contrast, None])
            continue
        stat = path.stat()
        sources.append([contrast, str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"version": CACHE_VERSION, "subject": subject.name, "sources": sources,
                       "settings": settings.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def prepare_subject(subject: Subject, settings: SliceSettings,
                    cache: Path) -> tuple[PreparedSubject | None, list[DataProblem]]:
    """The subject's cached slices (prepared now if the cache has no entry for its key), or the
    problems that stop it from being used. Problems are cached too, so a later run reports them
    without reading the files again."""
    key = subject_key(subject, settings)
    meta_path = cache / f"{subject.name}-{key}.json"
    array_path = cache / f"{subject.name}-{key}.npy"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("problems"):
                return None, [DataProblem(**p) for p in meta["problems"]]
            if array_path.is_file():
                return PreparedSubject(subject.name, array_path, meta["slices"], settings.contrasts), []
        except (json.JSONDecodeError, TypeError, KeyError):
            pass  # a damaged entry is prepared again
    cache.mkdir(parents=True, exist_ok=True)
    try:
        slices, kept = slice_subject(subject, settings)
    except SubjectProblems as err:
        if not any(p.transient for p in err.problems):  # problems of the content: cached with it
            atomic_write_text(meta_path, json.dumps({"subject": subject.name,
                                                     "problems": [p.to_dict() for p in err.problems]}))
        return None, err.problems
    atomic_write(array_path, lambda tmp: _save_npy(tmp, slices.astype(np.float16)))
    atomic_write_text(meta_path, json.dumps({"subject": subject.name, "slices": kept,
                                             "shape": list(slices.shape)}))
    return PreparedSubject(subject.name, array_path, kept, settings.contrasts), []


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)


# ---------------------------------------------------------------- split by subject


def split_subjects(names: list[str], eval_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic (train, eval) split of subject names: a seeded permutation of the sorted
    names; round(eval_fraction * n) subjects (at least one, when there are two or more) held out."""
    names = sorted(names)
    if len(names) < 2:
        raise ConfigError(f"a split by subject needs at least 2 subjects; found {len(names)}: {names}")
    n_eval = min(len(names) - 1, max(1, round(eval_fraction * len(names))))
    order = np.random.default_rng(seed).permutation(len(names))
    held = sorted(names[i] for i in order[:n_eval])
    train = sorted(names[i] for i in order[n_eval:])
    return train, held


def read_split(path: Path) -> dict[str, Any]:
    try:
        split = json.loads(path.read_text())
        train, held = split["train"], split["eval"]
        if not (isinstance(train, list) and isinstance(held, list)):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"{path}: not a split file (JSON with 'train' and 'eval' lists of subject "
                        f"names): {err}") from None
    overlap = sorted(set(train) & set(held))
    if overlap:
        raise DataError(f"{path}: subjects in both train and eval: {', '.join(overlap[:5])}")
    return split


# ---------------------------------------------------------------- the dataset


class SliceDataset(DescribedDataset):
    """Cached slices of a list of subjects. Items: (3, R, R) float32 in [-1, 1].

    ``contrast_mode="channels"``: all contrasts of a slice as channels (one contrast is
    replicated to 3 grey channels). ``"separate"``: every contrast slice is its own grey image
    (replicated to 3 channels). Items are requested as ``dataset[(index, aug_seed)]`` (see
    ``vaevq.data.datasets``); ``random_flip`` flips left-right.
    """

    def __init__(self, subjects: list[PreparedSubject], contrast_mode: str = "channels",
                 random_flip: bool = False, problems: list[DataProblem] | None = None,
                 skipped: list[str] | None = None, notes: list[str] | None = None,
                 split: dict[str, Any] | None = None):
        super().__init__(notes, problems, skipped, split)
        self.subjects = subjects
        self.contrast_mode = contrast_mode
        self.random_flip = random_flip
        self.n_contrasts = len(subjects[0].contrasts) if subjects else 1
        per = self.n_contrasts if contrast_mode == "separate" else 1
        self.index: list[tuple[int, int, int]] = [
            (s, j, c) for s, subject in enumerate(subjects)
            for j in range(len(subject.slices)) for c in range(per)]
        self.names = [f"{subjects[s].name}/z{subjects[s].slices[j]}"
                      + (f"/{subjects[s].contrasts[c]}" if per > 1 else "")
                      for s, j, c in self.index]
        self._arrays: dict[int, np.ndarray] = {}

    @property
    def channels(self) -> int:
        if self.contrast_mode == "separate" or self.n_contrasts == 1:
            return 3
        return self.n_contrasts

    def __len__(self) -> int:
        return len(self.index)

    def _array(self, s: int) -> np.ndarray:
        if s not in self._arrays:
            self._arrays[s] = np.load(self.subjects[s].array_path, mmap_mode="r")
        return self._arrays[s]

    def __getstate__(self):  # memory maps are reopened in each loader worker
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state

    def __getitem__(self, item) -> torch.Tensor:
        index, seed = item if isinstance(item, tuple) else (int(item), None)
        s, j, c = self.index[index]
        planes = np.asarray(self._array(s)[j], dtype=np.float32)  # (C, R, R)
        if self.contrast_mode == "separate":
            planes = planes[c:c + 1]
        image = torch.from_numpy(planes.copy())
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1).contiguous()
        if self.random_flip and seed is not None:
            gen = torch.Generator().manual_seed(seed)
            if bool(torch.rand(1, generator=gen) < 0.5):
                image = image.flip(-1)
        return image


def prepare_subjects(subjects: list[Subject], settings: SliceSettings, cache: Path,
                     progress: bool = False) -> tuple[list[PreparedSubject], list[DataProblem], list[str]]:
    """(prepared subjects, every problem found, names of the subjects that could not be used)."""
    from tqdm.auto import tqdm

    prepared, problems, skipped = [], [], []
    for subject in tqdm(subjects, desc="slices", disable=not progress, leave=False):
        done, found = prepare_subject(subject, settings, cache)
        problems += found
        if done is None:
            skipped.append(subject.name)
        else:
            prepared.append(done)
    return prepared, problems, skipped


# ---------------------------------------------------------------- datasets of a config

SPLIT_FILE = "split.json"


def _raise_or_keep(problems: list[DataProblem], on_error: str, what: str) -> None:
    if problems and on_error == "stop":
        listing = "\n  ".join(map(str, problems))
        raise DataError(f"{what}: {len(problems)} data problem(s) (data.on_error=stop; "
                        f"data.on_error=skip leaves those subjects out):\n  {listing}")


def brain_root(d: DataConfig) -> Path:
    """The BraTS root of the config: data.root, or the built-in brain written into the cache."""
    if d.source == "brain":

        return builtin_brain_root(cache_root(d), d.brain_subjects, seed=0,
                                  step=1 if d.resolution > 128 else 2)
    if not d.root:
        raise ConfigError("data.source=brats needs data.root=PATH (a BraTS root: one folder per subject "
                          "holding SUBJECT-t1n.nii.gz, ...)")
    return Path(d.root).expanduser()


def brain_split(d: DataConfig, subjects: list[Subject],
                run_dir: Path | None) -> tuple[dict[str, Any], list[DataProblem]]:
    """The split of the run (``run_dir/split.json`` when it exists), else a new seeded one."""
    names = [s.name for s in subjects]
    problems = []
    path = Path(run_dir) / SPLIT_FILE if run_dir is not None else None
    if path is not None and path.is_file():
        split = read_split(path)
        listed = set(split["train"]) | set(split["eval"])
        for name in sorted(listed - set(names)):
            problems.append(DataProblem(name, str(path), f"subject {name} of the split is not under "
                                        "data.root any more"))
        split["new_subjects_ignored"] = sorted(set(names) - listed)
        return split, problems
    train, held = split_subjects(names, d.eval_fraction, d.split_seed)
    return {"seed": d.split_seed, "eval_fraction": d.eval_fraction, "train": train, "eval": held}, problems


def colin27_eval_subject(d: DataConfig, settings: SliceSettings) -> tuple[Subject | None, str | None]:
    """The built-in brain's evaluation subject, Colin27, when it applies (data.source=brain,
    data.brain_eval=colin27, contrasts [t1n], mricron-data installed), and a note saying which
    evaluation data is used and why."""
    if d.source != "brain" or d.brain_eval != "colin27":
        return None, None

    colin = colin27_path()
    if colin is None:
        return None, (f"Colin27 ({COLIN27}) is not installed (apt-get install mricron-data); "
                      "evaluating on the held-out synthetic MNI152 subjects instead")
    if settings.contrasts != ("t1n",):
        return None, ("Colin27 has a T1 only; with data.contrasts other than [t1n] evaluation uses "
                      "the held-out synthetic MNI152 subjects")
    return (Subject("Colin27", colin.parent, {"t1n": colin}),
            f"evaluating on Colin27, an independent real brain ({colin})")


def build_brain_datasets(config, run_dir: str | Path | None = None, progress: bool = False,
                         allow_empty: bool = False) -> tuple[SliceDataset, SliceDataset]:
    """(train, eval) slice datasets of a brats/brain config. Every problem is on ``.problems``
    of the dataset it concerns (and raised when data.on_error=stop); notes on ``.notes``."""
    d = config.data
    settings = SliceSettings.from_config(d)
    cache = cache_root(d)
    root = brain_root(d)
    subjects = find_subjects(root, settings.contrasts)
    split, split_problems = brain_split(d, subjects, Path(run_dir) if run_dir else None)
    by_name = {s.name: s for s in subjects}
    notes = [f"data.root {root}: {len(subjects)} subjects; split by subject "
             f"({len(split['train'])} train / {len(split['eval'])} eval, seed {split.get('seed')})"]
    if split.get("new_subjects_ignored"):
        notes.append(f"{len(split['new_subjects_ignored'])} subject(s) not in the run's split.json ignored")
    train_subjects = [by_name[n] for n in split["train"] if n in by_name]
    eval_subjects = [by_name[n] for n in split["eval"] if n in by_name]
    colin, note = colin27_eval_subject(d, settings)
    if note:
        notes.append(note)
    if colin is not None:
        eval_subjects = [colin]
    train_prepared, train_problems, train_skipped = prepare_subjects(train_subjects, settings, cache, progress)
    eval_prepared, eval_problems, eval_skipped = prepare_subjects(eval_subjects, settings, cache, progress)
    train_problems = split_problems + train_problems
    _raise_or_keep(train_problems + eval_problems, d.on_error, f"data.root {root}")
    for name, prepared, skipped in (("train", train_prepared, train_skipped),
                                    ("eval", eval_prepared, eval_skipped)):
        if not prepared and not allow_empty:
            raise DataError(f"data.root {root}: no usable {name} subject ({len(skipped)} skipped for "
                            "data problems; run `vaevq data check` to list them)")
    train = SliceDataset(train_prepared, d.contrast_mode, d.random_flip, train_problems, train_skipped,
                         notes, split)
    held = SliceDataset(eval_prepared, d.contrast_mode, False, eval_problems, eval_skipped, notes, split)
    return train, held


def warm_brain_cache(config, rank: int, world: int, local_main: bool) -> None:
    """Many processes: prepare the slice cache in parallel before anyone reads it. The node's
    first process writes the built-in brain; after a barrier, rank r prepares subjects r, r + world,
    ... (entries are written atomically). The caller puts a barrier after this."""

    d = config.data
    if not d.is_brain:
        return
    if d.source == "brain" and local_main:
        brain_root(d)
    barrier()
    settings = SliceSettings.from_config(d)
    subjects = find_subjects(brain_root(d), settings.contrasts)
    colin, _ = colin27_eval_subject(d, settings)
    if colin is not None and rank == 0:
        subjects.append(colin)
    prepare_subjects(subjects[rank::world], settings, cache_root(d))


def brain_eval_dataset(config, path: str | Path) -> SliceDataset:
    """Slices of every subject under a BraTS root, or of one NIfTI volume (one contrast)."""
    d = config.data
    settings = SliceSettings.from_config(d)
    p = Path(path).expanduser()
    if p.is_file():
        if len(settings.contrasts) != 1:
            raise ConfigError(f"--data {p}: one NIfTI file gives one contrast, but data.contrasts is "
                              f"{list(settings.contrasts)}; pass a BraTS root instead")
        subjects = [Subject(p.name.split(".nii")[0], p.parent, {settings.contrasts[0]: p})]
    else:
        subjects = find_subjects(p, settings.contrasts)
    prepared, problems, skipped = prepare_subjects(subjects, settings, cache_root(d))
    _raise_or_keep(problems, d.on_error, f"--data {p}")
    if not prepared:
        raise DataError(f"--data {p}: no usable subject: " + "; ".join(map(str, problems)))
    return SliceDataset(prepared, d.contrast_mode, False, problems, skipped)

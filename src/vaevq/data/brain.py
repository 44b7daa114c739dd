"""Built-in real brain MRI: the MNI ICBM152 2009 template that ships inside nilearn, and
Debian's Colin27 (``mricron-data``) as an independent brain for evaluation.

nilearn's package data holds the skull-stripped T1 (197 x 233 x 189 at 1 mm, RAS) and the
grey- and white-matter probability maps. :func:`write_synthetic_brats` turns them into
BraTS-layout subject folders: the T1 as ``t1n``, and ``t1c``, ``t2w``, ``t2f`` (with a ``seg``
label map of a synthetic lesion) derived from the tissue maps, each subject with its own crop,
left-right flip, intensity scale, noise and on-disk orientation. The built-in "brain" dataset is
such a root, written once into the cache and read by the ordinary BraTS reader.

The files are located inside the installed packages (never imported, never downloaded).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import numpy as np

from vaevq.config import ConfigError

MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
COLIN27 = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
BUILTIN_VERSION = 1


def _need_nibabel() -> None:
    if importlib.util.find_spec("nibabel") is None:
        raise ConfigError("brain MRI data needs nibabel and nilearn: pip install 'vaevq[medical]'")


def mni152_path(kind: str = "t1") -> Path:
    """Path of an MNI152 2009 file inside the installed nilearn package."""
    _need_nibabel()
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the built-in brain (MNI152 template) ships inside nilearn: "
                          "pip install 'vaevq[medical]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / MNI_FILES[kind]
    if not path.is_file():
        raise ConfigError(f"nilearn is installed but {path} is missing; reinstall nilearn")
    return path


def colin27_path() -> Path | None:
    """Debian's Colin27 skull-stripped T1 (``apt-get install mricron-data``), or None."""
    return COLIN27 if COLIN27.is_file() else None


def _load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    image = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def synthetic_contrasts(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray,
                        rng: np.random.Generator) -> dict[str, np.ndarray]:
    """t1n, t1c, t2w, t2f and seg on the template grid (brain = T1 > 0)."""
    brain = t1 > 0
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    # a lesion: a smooth blob in one hemisphere, with an enhancing rim and surrounding oedema
    centre = np.array([rng.uniform(0.3, 0.7), rng.uniform(0.35, 0.65), rng.uniform(0.45, 0.7)])
    centre = centre * np.array(t1.shape)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in t1.shape], indexing="ij"))
    radius = rng.uniform(8.0, 16.0)
    dist = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0)) / radius
    core = (dist < 1.0) & brain
    rim = (dist >= 0.8) & (dist < 1.0) & brain
    oedema = (dist >= 1.0) & (dist < 1.6) & brain
    t1n = t1.copy()
    t1n[core] *= 0.7
    t1c = t1n.copy()
    t1c[rim] = t1.max() * 1.1
    t2w = (0.95 * csf + 0.55 * gm + 0.3 * wm) * 255.0
    t2w[oedema | core] = np.maximum(t2w[oedema | core], 200.0)
    t2f = (0.1 * csf + 0.6 * gm + 0.42 * wm) * 255.0
    t2f[oedema] = 230.0
    for volume in (t2w, t2f):
        volume[~brain] = 0.0
    seg = np.zeros(t1.shape, dtype=np.uint8)
    seg[oedema] = 2
    seg[core] = 1
    seg[rim] = 3
    return {"t1n": t1n, "t1c": t1c, "t2w": t2w, "t2f": t2f, "seg": seg}


def write_synthetic_brats(root: str | Path, n_subjects: int = 10, seed: int = 0,
                          contrasts: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f", "seg"),
                          step: int = 1) -> list[Path]:
    """Write ``n_subjects`` BraTS-layout folders ``root/BraTS-MNI-{i:05d}-000/`` made from the
    MNI152 template: each with its own crop, flip, intensity scale, noise and orientation on disk
    (RAS, LAS, LPS or PSR axis order), so the reader's reorientation is exercised. Volumes are
    int16 like BraTS's. ``step`` > 1 keeps every step-th voxel (2: 2 mm). Returns the folders."""
    import nibabel as nib

    t1, affine = _load(mni152_path("t1"))
    gm, _ = _load(mni152_path("gm"))
    wm, _ = _load(mni152_path("wm"))
    if step > 1:
        t1, gm, wm = (v[::step, ::step, ::step] for v in (t1, gm, wm))
        affine = affine.copy()
        affine[:3, :3] = affine[:3, :3] * step
    gm, wm = gm / max(gm.max(), 1e-6), wm / max(wm.max(), 1e-6)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    folders = []
    orientations = ["RAS", "LAS", "LPS", "PSR"]
    for i in range(n_subjects):
        rng = np.random.default_rng([seed, i])
        volumes = synthetic_contrasts(t1, gm, wm, rng)
        # crop: keep the brain, drop a random margin on each side
        brain = np.argwhere(t1 > 0)
        lo, hi = brain.min(0), brain.max(0) + 1
        start = [int(rng.integers(0, max(1, lo[a] + 1))) for a in range(3)]
        stop = [int(t1.shape[a] - rng.integers(0, max(1, t1.shape[a] - hi[a] + 1))) for a in range(3)]
        box = tuple(slice(s, e) for s, e in zip(start, stop))
        flip = bool(rng.integers(0, 2))
        scale = float(rng.uniform(0.5, 3.0))
        noise = float(rng.uniform(0.0, 0.03))
        sub_affine = affine.copy()
        sub_affine[:3, 3] = affine[:3, :3] @ np.array(start) + affine[:3, 3]
        name = f"BraTS-MNI-{i:05d}-000"
        folder = root / name
        folder.mkdir(exist_ok=True)
        axcodes = orientations[i % len(orientations)]
        for contrast in contrasts:
            volume = volumes[contrast][box]
            if flip:
                volume = volume[::-1]
            if contrast != "seg":
                mask = volume > 0
                volume = volume * scale
                if noise:
                    volume = volume + mask * noise * volume.max() * rng.standard_normal(volume.shape)
                volume = np.where(mask, np.maximum(np.rint(volume), 1.0), 0.0)
            volume = volume.astype(np.int16)
            data, out_affine = _reorient(np.ascontiguousarray(volume), sub_affine, axcodes)
            image = nib.Nifti1Image(data, out_affine)
            image.header.set_xyzt_units("mm")
            nib.save(image, str(folder / f"{name}-{contrast}.nii.gz"))
        folders.append(folder)
    return folders


def _reorient(data: np.ndarray, affine: np.ndarray, axcodes: str) -> tuple[np.ndarray, np.ndarray]:
    """RAS data + affine -> the same image stored in ``axcodes`` orientation."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, inv_ornt_aff, ornt_transform

    transform = ornt_transform(axcodes2ornt("RAS"), axcodes2ornt(tuple(axcodes)))
    out = nib.orientations.apply_orientation(data, transform)
    out_affine = affine @ inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(out), out_affine


def builtin_brain_root(cache: Path, n_subjects: int, seed: int = 0, step: int = 1) -> Path:
    """The built-in brain root in the cache, written once (rewritten when its recipe changes)."""
    root = cache / f"builtin-brain-v{BUILTIN_VERSION}-n{n_subjects}-s{seed}-step{step}"
    marker = root / "COMPLETE.json"
    if marker.is_file():
        return root
    tmp = root.with_name(f"{root.name}.partial-{os.getpid()}")  # one per process: no shared scratch
    if tmp.exists():
        shutil.rmtree(tmp)
    write_synthetic_brats(tmp, n_subjects, seed, step=step)
    (tmp / "COMPLETE.json").write_text(json.dumps({"source": "nilearn MNI152 2009 T1 + GM/WM maps",
                                                   "subjects": n_subjects, "seed": seed}))
    if root.exists() and not marker.is_file():
        shutil.rmtree(root, ignore_errors=True)  # an incomplete leftover
    try:
        tmp.rename(root)
    except OSError:  # another process finished first: keep its copy (the same content)
        shutil.rmtree(tmp, ignore_errors=True)
        if not marker.is_file():
            raise
    return root

"""Every image file decoded once before training, so a bad file (truncated, not an image, too
large) is excluded and listed instead of stopping a run at the step that first reads it.

Verdicts are cached per file (path, size, modification time) under ``$VAEVQ_CACHE_DIR/image-scan``
(default ``~/.cache/vaevq``), so a folder is decoded once per machine; a changed file is decoded
again. Threads decode in parallel (PIL releases the GIL while decoding).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from vaevq.data.transforms import ImageReadError, load_rgb, shown
from vaevq.fileio import atomic_write_text

EXCLUDED = "excluded.json"  # RUN/excluded.json: the files a run left out (reused on resume)


def _verdict(path: Path) -> tuple[list, str | None]:
    """((size, mtime_ns) of the file, the reason it cannot be used or None)."""
    try:
        st = path.stat()
    except OSError as err:
        return [None, None], f"cannot read image: {err.strerror or err}"
    try:
        load_rgb(path)
    except ImageReadError as err:
        return [st.st_size, st.st_mtime_ns], f"cannot read image: {err.reason}"
    return [st.st_size, st.st_mtime_ns], None


def scan_images(files: list[Path], cache_dir: Path | None, progress: bool = False,
                workers: int | None = None) -> dict[Path, str]:
    """{bad file: reason} of ``files`` (each decoded once, verdicts cached in ``cache_dir``)."""
    if not files:
        return {}
    cache = None
    verdicts: dict[str, list] = {}
    if cache_dir is not None:
        root = os.path.commonpath([shown(f.parent) for f in files])
        cache = Path(cache_dir) / "image-scan" / (hashlib.sha256(root.encode()).hexdigest()[:16] + ".json")
        if cache.is_file():
            try:
                verdicts = json.loads(cache.read_text())
            except (OSError, ValueError):
                verdicts = {}

    def fresh(f: Path) -> bool:
        old = verdicts.get(shown(f))
        if old is None:
            return False
        try:
            st = f.stat()
        except OSError:
            return False
        return old[:2] == [st.st_size, st.st_mtime_ns]

    todo = [f for f in files if not fresh(f)]
    if todo:
        with ThreadPoolExecutor(max_workers=workers or min(16, os.cpu_count() or 1)) as pool:
            for f, (stat, reason) in zip(todo, tqdm(pool.map(_verdict, todo), total=len(todo), leave=False,
                                                   desc="checking images", disable=not progress)):
                verdicts[shown(f)] = [*stat, reason]
        if cache is not None:
            try:
                atomic_write_text(cache, json.dumps(verdicts))
            except OSError:
                pass  # a read-only cache only costs a second scan
    return {f: verdicts[shown(f)][2] for f in files if verdicts[shown(f)][2]}


def read_excluded(run_dir: str | Path | None) -> dict[str, str] | None:
    """The exclusions a run recorded at its first start ({file: reason}), or None."""
    if run_dir is None or not (Path(run_dir) / EXCLUDED).is_file():
        return None
    return json.loads((Path(run_dir) / EXCLUDED).read_text())

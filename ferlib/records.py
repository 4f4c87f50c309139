"""Small run records that outlive the machine that made them.

A session's machine keeps nothing of ``outputs/``, yet a sweep of many hours (the open-set table
from face weights: about 28 h on 2 CPU cores) must finish over several. A *record* is the part of
a finished run that its tables and figures read, never what could retrain it (no weights, no
per-image scores): committed beside the code (``docs/results/<sweep>/<run>/``), it lets a later
machine skip the run as if it had run there.

- :func:`save_run_record` copies a finished open-set run's :data:`RUN_FILES` and stage records
  (``stages/*.json``, which hold each stage's key);
- :func:`restore_run_record` copies them back into an empty run folder only when the runner,
  reading the record's stage keys, would run nothing: a record of other settings (another key)
  restores nothing, and the run trains.

Stage 05's combinations keep their own records the same way (:mod:`ferlib.noisy`,
``records_dir``), with :func:`copy_files`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ferlib.io import atomic_write

# what `tables`, `report.visualise` and the reproduce tables read of a finished open-set run
RUN_FILES = (
    "manifest.json",
    "metrics.csv",
    "01_close_set/results.json",
    "01_close_set/history.csv",
    "02_pseudo_labels/spread.csv",
)
STAGE_RECORDS = "stages"


def copy_files(
    src: str | os.PathLike, dest: str | os.PathLike, names: Iterable[str], compress: bool = False
) -> list[Path]:
    """Copy each of ``names`` (paths relative to ``src``) that exists to the same place under
    ``dest``, atomically; with ``compress``, ``.npz`` files are written compressed (``np.load``
    reads back the same arrays). Returns the written paths."""
    src, dest = Path(src), Path(dest)
    written = []
    for name in names:
        path = src / name
        if not path.is_file():
            continue
        if compress and path.suffix == ".npz":
            with np.load(path) as z:
                arrays = {k: z[k] for k in z.files}

            def writer(tmp: Path, arrays=arrays) -> None:
                with open(tmp, "wb") as handle:
                    np.savez_compressed(handle, **arrays)

            written.append(atomic_write(dest / name, writer))
        else:
            written.append(atomic_write(dest / name, lambda tmp, path=path: tmp.write_bytes(path.read_bytes())))
    return written


def _names(run_dir: Path) -> list[str]:
    stages = sorted(p.relative_to(run_dir).as_posix() for p in (run_dir / STAGE_RECORDS).glob("*.json"))
    return [*RUN_FILES, *stages]


def save_run_record(run_dir: str | os.PathLike, records: str | os.PathLike) -> list[Path]:
    """Copy the finished run ``run_dir``'s record files to ``records/<run name>/``."""
    run_dir = Path(run_dir)
    return copy_files(run_dir, Path(records) / run_dir.name, _names(run_dir))


def restore_run_record(
    run_dir: str | os.PathLike,
    records: str | os.PathLike,
    would_run: Callable[[Path], Sequence[object]],
) -> bool:
    """Copy ``records/<run name>/`` into ``run_dir`` when ``run_dir`` has no stage record yet
    and ``would_run(folder)`` (the stages the runner would run, reading the stage records in
    ``folder``) is empty for the record: the record is of exactly these settings. Returns
    whether it restored."""
    run_dir = Path(run_dir)
    src = Path(records) / run_dir.name
    if not (src / STAGE_RECORDS).is_dir() or any((run_dir / STAGE_RECORDS).glob("*.json")):
        return False
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / run_dir.name
        shutil.copytree(src / STAGE_RECORDS, probe / STAGE_RECORDS)
        if would_run(probe):
            return False
    names = _names(src)
    stage_names = [n for n in names if n.startswith(f"{STAGE_RECORDS}/")]
    # the stage records last: a copy killed half-way leaves stages that still run
    copy_files(src, run_dir, [n for n in names if n not in stage_names])
    copy_files(src, run_dir, stage_names)
    return True

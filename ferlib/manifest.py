"""Run manifest: ``outputs/<run>/manifest.json``.

One JSON file per run that says what was run and where: parameters, seed, library versions,
the device, the git commit of the code (and whether the tree was dirty), per-stage wall time,
the data hash and the final metrics. Each stage adds its own section with
:func:`update_manifest`, which deep-merges into the file and writes it atomically, so a killed
stage never leaves a torn manifest.
"""

from __future__ import annotations

import copy
import os
import platform
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ferlib.io import read_json, write_json

MANIFEST_NAME = "manifest.json"

#: The repository that holds the ``ferlib`` package (an editable install points here).
REPO_ROOT = Path(__file__).resolve().parent.parent


def manifest_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / MANIFEST_NAME


def read_manifest(run_dir: str | os.PathLike) -> dict:
    """The run's manifest as a dict (``{}`` when the run has none yet)."""
    path = manifest_path(run_dir)
    if not path.exists():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at top level, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict:
    """Return ``base`` updated with ``update``; nested dicts merge, anything else replaces.

    Neither argument is modified. Lists replace (a metrics table is replaced whole).
    """
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Serialise read-modify-write of one manifest between processes (POSIX; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / f".{MANIFEST_NAME}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def modify_manifest(run_dir: str | os.PathLike, change: Callable[[dict], dict]) -> dict:
    """Apply ``change(manifest) -> manifest`` under a lock and write the result atomically.

    Under ``torchrun`` rank 0 alone reads, changes and writes (taking the lock only there: a
    rank holding it while waiting for rank 0's write would block rank 0), and every rank
    returns rank 0's manifest (:func:`ferlib.distributed.run_on_main`)."""
    from ferlib import distributed

    if distributed.is_distributed():
        return distributed.run_on_main(lambda: modify_manifest(run_dir, change))
    run_dir = Path(run_dir)
    with _locked(run_dir):
        manifest = change(read_manifest(run_dir))
        write_json(manifest_path(run_dir), manifest)
    return manifest


def update_manifest(run_dir: str | os.PathLike, **sections: Any) -> dict:
    """Deep-merge ``sections`` into ``run_dir/manifest.json`` (atomically) and return the result.

    >>> update_manifest(run_dir, stages={"01_train_close_set": {"wall_s": 12.3}})
    >>> update_manifest(run_dir, data={"hash": "ab12..."}, metrics=[...])
    """
    return modify_manifest(run_dir, lambda manifest: deep_merge(manifest, sections))


def set_manifest(run_dir: str | os.PathLike, **sections: Any) -> dict:
    """Replace whole top-level sections (no merge), e.g. the ``params`` of a rerun whose
    extra parameters changed: a merge would keep the keys that were dropped."""

    def change(manifest: dict) -> dict:
        manifest = dict(manifest)
        manifest.update(copy.deepcopy(sections))
        return manifest

    return modify_manifest(run_dir, change)


# --------------------------------------------------------------------------------------------
# environment


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout


def git_info(repo_root: str | os.PathLike | None = None) -> dict | None:
    """``{"commit": sha or None, "dirty": bool}`` for the repository holding ``ferlib``.

    ``None`` when that folder is not the top of a git checkout (e.g. a plain wheel install, or
    no ``git``). ``commit`` is ``None`` in a repository without commits yet.
    """
    root = Path(repo_root) if repo_root is not None else REPO_ROOT
    top = _git(["rev-parse", "--show-toplevel"], root)
    if top is None:
        return None
    try:
        if Path(top.strip()).resolve() != root.resolve():
            return None  # e.g. site-packages inside some other checkout
    except OSError:
        return None
    head = _git(["rev-parse", "--verify", "--quiet", "HEAD"], root)
    status = _git(["status", "--porcelain"], root)
    return {
        "commit": head.strip() if head else None,
        "dirty": bool(status.strip()) if status is not None else None,
    }


def _version(dist: str, module_name: str) -> str | None:
    """Installed version of a distribution, read from its metadata (no import: fast)."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        pass
    try:  # e.g. a source checkout on sys.path
        return getattr(__import__(module_name), "__version__", None)
    except Exception:  # noqa: BLE001 - a broken optional import must not stop a run
        return None


def collect_environment() -> dict:
    """Versions, device and code revision, for ``manifest["environment"]``.

    Keys: ``python``, ``platform``, ``torch``, ``torchvision``, ``numpy``, ``sklearn``,
    ``pandas``, ``ferlib`` (versions; ``None`` when a library is missing), ``cuda_available``,
    ``cuda_device`` (name of device 0 or ``None``), ``cpu_native_bf16`` (whether ``amp`` pays on
    this CPU), ``git_commit`` and ``git_dirty`` (both
    ``None`` when ferlib does not run from a git checkout), ``world_size`` under torchrun,
    and a few host facts.
    """
    import ferlib

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "ferlib": getattr(ferlib, "__version__", None),
        "torch": _version("torch", "torch"),
        "torchvision": _version("torchvision", "torchvision"),
        "numpy": _version("numpy", "numpy"),
        "sklearn": _version("scikit-learn", "sklearn"),
        "pandas": _version("pandas", "pandas"),
    }
    env.update(cuda_available=False, cuda_device=None, cuda_version=None)
    if env["torch"] is not None:
        try:
            import torch

            env["torch"] = torch.__version__  # with its build tag, e.g. 2.14.1+cu130
            env["cuda_version"] = torch.version.cuda
            env["cuda_available"] = bool(torch.cuda.is_available())
            from ferlib.train import cpu_has_native_bf16

            env["cpu_native_bf16"] = cpu_has_native_bf16()  # what ``amp`` gains on the CPU
            if env["cuda_available"]:
                env["cuda_device"] = torch.cuda.get_device_name(0)
                env["cuda_device_count"] = torch.cuda.device_count()
        except Exception as exc:  # noqa: BLE001 - a driver problem is recorded, not raised
            env["cuda_error"] = repr(exc)
    from ferlib import distributed

    if distributed.world_size() > 1:  # under torchrun (absent in a single process)
        env["world_size"] = distributed.world_size()
    git = git_info()
    env["git_commit"] = git["commit"] if git else None
    env["git_dirty"] = git["dirty"] if git else None
    return env

"""Peak memory of building the uint8 image cache, in memory vs memory-mapped.

What it measures: :func:`ferlib.data.build_cache` on a large synthetic stand-in (default
200,000 gray images at 112 px, AffectNet-sized), each mode in a fresh process, with a
sampler thread reading ``/proc/self/status`` every 5 ms:

- ``peak anon``: the peak of anonymous resident memory (``RssAnon``), i.e. what the process
  itself holds and cannot give back: the figure that decides whether a set fits;
- ``peak rss``: the peak of all resident memory (``VmHWM``), which for the memory-mapped
  mode also counts the file's pages while they are mapped (page cache the kernel can
  drop and re-read, not memory the process owns);
- ``--colour``: colour images (three channels, three times the bytes) instead of gray;
- after the build, the memory-mapped cache is opened again (no decoding) and a batch of
  512 random rows gathered: the resident memory that costs.

The images are generated on the fly by a stand-in for ``decode_image`` (a few numpy
operations per image), not written to and decoded from PNGs: 200k PNGs would take long
to write and the decoder's memory does not depend on the set's size. So the figures
measure the cache's own memory, not decoding speed.

Run from the repository root::

    .venv/bin/python benchmarks/cache_memory.py                     # 200k x 112 px
    .venv/bin/python benchmarks/cache_memory.py --n 50000 --size 112  # smaller
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ferlib.data import cache as cache_module  # noqa: E402
from ferlib.data.base import FERDataset  # noqa: E402
from ferlib.emotions import BASIC7  # noqa: E402

MIB = 1 << 20


class StandIn(FERDataset):
    """``n`` gray images that exist only as indices (no files to stat or decode)."""

    def _fingerprint_items(self):
        yield f"stand-in\t{len(self)}"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Sampler:
    """Peak ``RssAnon`` while running (the kernel keeps ``VmHWM``, the total peak, itself)."""

    def __init__(self, every_s: float = 0.005) -> None:
        self.every_s, self.peak_anon = every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_anon = max(self.peak_anon, _status_kib("RssAnon"))
            time.sleep(self.every_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_anon = max(self.peak_anon, _status_kib("RssAnon"))


def _stand_in(n: int, size: int) -> StandIn:
    labels = np.asarray([int(BASIC7[i % len(BASIC7)]) for i in range(n)])
    return StandIn(
        name="standin",
        split="train",
        root=Path("standin"),
        paths=[Path("standin") / f"{i}.png" for i in range(n)],
        labels=labels,
        classes=BASIC7,
    )


def _patch_decoder(size: int, colour: bool) -> None:
    """Cheap deterministic gray (or colour) images in place of PIL decoding (see the module docstring)."""
    rng = np.random.default_rng(0)
    bases = rng.integers(0, 256, (64, size, size, 3) if colour else (64, size, size), dtype=np.uint8)

    def decode(path, image_size):
        i = int(Path(path).stem)
        return bases[i % 64] + np.uint8(i % 251)

    cache_module.decode_image = decode


def worker(mode: str, n: int, size: int, chunk: int, cache_dir: str, colour: bool) -> dict:
    ds = _stand_in(n, size)
    _patch_decoder(size, colour)
    base_anon = _status_kib("RssAnon")
    start = time.perf_counter()
    with Sampler() as sampler:
        cache = cache_module.build_cache(
            ds,
            size,
            cache_dir=cache_dir if mode == "memmap" else None,
            memmap=mode == "memmap",
            chunk=chunk,
            progress=False,
            workers=1,
        )
    seconds = time.perf_counter() - start
    out = {
        "mode": mode,
        "n": n,
        "size": size,
        "shape": list(cache.images.shape),
        "cache_mib": cache.images.numel() / MIB,
        "build_s": seconds,
        "baseline_anon_mib": base_anon / 1024,
        "peak_anon_mib": sampler.peak_anon / 1024,
        "peak_rss_mib": _status_kib("VmHWM") / 1024,
    }
    if mode == "memmap":
        del cache
        anon0 = _status_kib("RssAnon")
        again = cache_module.build_cache(ds, size, cache_dir=cache_dir, memmap=True, progress=False)
        rows = np.random.default_rng(1).choice(len(again), 512, replace=False)
        batch = again.rows(rows)[np.arange(512)]
        out["reload_anon_mib"] = (_status_kib("RssAnon") - anon0) / 1024
        out["reload_batch"] = list(batch.shape)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="images in the stand-in set")
    parser.add_argument("--size", type=int, default=112, help="image side in pixels")
    parser.add_argument("--chunk", type=int, default=1024, help="build_cache's chunk (images)")
    parser.add_argument("--modes", nargs="+", default=["memory", "memmap"], choices=["memory", "memmap"])
    parser.add_argument("--cache-dir", default=None, help="where the memmap file goes (default: a temp folder)")
    parser.add_argument("--colour", action="store_true", help="colour images (three channels) instead of gray")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.size, args.chunk, args.cache_dir, args.colour)))
        return
    rows = []
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as tmp:
        for mode in args.modes:
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                mode,
                "--n",
                str(args.n),
                "--size",
                str(args.size),
                "--chunk",
                str(args.chunk),
                "--cache-dir",
                tmp,
                *(["--colour"] if args.colour else []),
            ]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    kind = "colour" if args.colour else "gray"
    print(f"build_cache of {args.n:,} {kind} images at {args.size} px (generated on the fly), chunk {args.chunk}")
    print(
        "| mode | cache shape | cache MiB | build s | peak anon MiB (above start) | peak RSS MiB | "
        "reload + 512-row batch, anon MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        reload = f"{r['reload_anon_mib']:.1f}" if "reload_anon_mib" in r else "-"
        print(
            f"| {r['mode']} | {tuple(r['shape'])} | {r['cache_mib']:,.0f} | {r['build_s']:.1f} | "
            f"{r['peak_anon_mib']:,.0f} ({r['peak_anon_mib'] - r['baseline_anon_mib']:+,.0f}) | "
            f"{r['peak_rss_mib']:,.0f} | {reload} |"
        )


if __name__ == "__main__":
    main()

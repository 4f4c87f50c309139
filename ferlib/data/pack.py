"""Pack a data-set folder into a few compressed parts, and rebuild it pixel for pixel.

Why. A lent GPU machine often cannot reach the network or the shared disk: the data set has
to travel with the job, under a size limit (tens of MiB), and FERPlus's 35,887 PNG files of
48x48 pixels are 270 MiB on disk as files but 82 MiB as raw pixels, which compress well once
neighbouring rows are delta-coded. :func:`pack_folder` stores every PNG's decoded pixels
(grouped by mode and size, each group one xz stream with a delta filter of one row) and
every other file byte for byte, splits the result into parts of at most ``part_mb`` MiB and
writes an index (``pack.json``) with each file's path and a digest of its pixels.
:func:`unpack_folder` rebuilds the folder, writing PNGs again (their bytes may differ, their
pixels do not: each image's pixel digest is checked) and copying the other files.

Only PNG images are packed as pixels: re-encoding a JPEG would change its pixels, so JPEG
sources are refused with the file named (pack such sets as plain files with ``tar``).

    python -m ferlib.data.pack pack ../shared/data/ferplus /tmp/ferplus_pack --part-mb 15
    python -m ferlib.data.pack unpack /tmp/ferplus_pack /tmp/ferplus
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ferlib.io import atomic_write, write_json

__all__ = ["pack_folder", "unpack_folder"]

PNG = (".png",)
MODES = ("L", "RGB", "RGBA")  # modes whose pixels np.asarray / Image.fromarray carry both ways
REFUSED = (".jpg", ".jpeg", ".webp")
INDEX = "pack.json"
FORMAT = 1


def _filters(width: int, channels: int) -> list[dict]:
    """Delta-code each byte against the byte one image row above, then LZMA2."""
    dist = max(1, min(256, width * channels))
    return [{"id": lzma.FILTER_DELTA, "dist": dist}, {"id": lzma.FILTER_LZMA2, "preset": 6}]


def _digest(array: np.ndarray) -> str:
    """The first 16 hex digits of the pixels' SHA-256: enough to catch a corrupted part."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path


def pack_folder(src: str | Path, dst: str | Path, part_mb: float = 15.0, progress: bool = True) -> dict:
    """Pack every file under ``src`` into ``dst`` (created; must not hold a pack already).

    Returns the index written to ``dst/pack.json``: ``groups`` (mode, height, width, count and
    each image's path and pixel digest, in stream order), ``files`` (other files' paths and
    sizes), ``streams`` (where each group's and the files' stream lie in the parts), ``parts``
    (file names in order)."""
    from PIL import Image

    from ferlib.progress import progress_bar

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder to pack")
    if not part_mb > 0:
        raise ValueError(f"part_mb must be positive, got {part_mb}")
    if (dst / INDEX).exists():
        raise FileExistsError(f"{dst / INDEX}: a pack is already there; pack into an empty folder")
    paths = list(_files(src))
    refused = [p for p in paths if p.suffix.lower() in REFUSED]
    if refused:
        raise ValueError(
            f"{refused[0]}: {refused[0].suffix} images would change pixels when re-encoded; "
            f"{len(refused)} such file(s) under {src}; pack them as plain files (tar)"
        )
    groups: dict[tuple[str, int, int], list[np.ndarray]] = defaultdict(list)
    members: dict[tuple[str, int, int], dict[str, list[str]]] = defaultdict(lambda: {"paths": [], "digests": []})
    others = []
    for path in progress_bar(paths, desc="pack", disable=not progress):
        rel = path.relative_to(src).as_posix()
        if path.suffix.lower() in PNG:
            try:
                with Image.open(path) as im:
                    im.load()
                    mode = im.mode
                    array = np.asarray(im)
            except OSError as err:
                raise ValueError(f"{path}: not a readable PNG ({err})") from None
            if mode not in MODES or array.dtype != np.uint8:
                raise ValueError(f"{path}: PNG mode {mode!r} is not packed as pixels (only {', '.join(MODES)})")
            key = (mode, int(array.shape[0]), int(array.shape[1]))
            members[key]["paths"].append(rel)
            members[key]["digests"].append(_digest(array))
            groups[key].append(array)
        else:
            others.append({"path": rel, "bytes": path.stat().st_size})

    streams: list[tuple[str, bytes]] = []
    group_index = []
    for (mode, h, w), arrays in groups.items():
        stack = np.stack(arrays)
        channels = 1 if stack.ndim == 3 else stack.shape[3]
        name = f"{mode}_{h}x{w}"
        streams.append((name, lzma.compress(stack.tobytes(), format=lzma.FORMAT_RAW, filters=_filters(w, channels))))
        group_index.append(
            {"name": name, "mode": mode, "height": h, "width": w, "channels": channels}
            | {"dtype": str(stack.dtype), "count": len(arrays)}
            | members[(mode, h, w)]
        )
    blob = b"".join((src / o["path"]).read_bytes() for o in others)
    streams.append(("files", lzma.compress(blob, preset=6)))

    # one byte sequence, cut into parts; the index says where each stream starts and ends
    offsets, start = {}, 0
    for name, data in streams:
        offsets[name] = [start, start + len(data)]
        start += len(data)
    payload = b"".join(data for _, data in streams)
    size = int(part_mb * 2**20)
    dst.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(0, max(1, len(payload)), size):
        name = f"part{len(parts):03d}.bin"
        chunk = payload[i : i + size]
        atomic_write(dst / name, lambda p, chunk=chunk: p.write_bytes(chunk))
        parts.append(name)
    index = {
        "format": FORMAT,
        "source": src.name,
        "groups": group_index,
        "files": others,
        "streams": offsets,
        "parts": parts,
        "part_bytes": size,
    }
    write_json(dst / INDEX, index)  # written last: a pack without its index is unfinished
    return index


def unpack_folder(pack: str | Path, dst: str | Path, progress: bool = True) -> int:
    """Rebuild the packed folder under ``dst``; returns the number of files written. Each image's
    pixels are checked against the digest taken when packing."""
    from PIL import Image

    from ferlib.progress import progress_bar

    pack, dst = Path(pack), Path(dst)
    if not (pack / INDEX).is_file():
        raise FileNotFoundError(f"{pack / INDEX}: no pack index (an unfinished or foreign pack)")
    index = json.loads((pack / INDEX).read_text())
    if index.get("format") != FORMAT:
        raise ValueError(f"{pack / INDEX}: pack format {index.get('format')!r}, this kit reads {FORMAT}")
    missing = [p for p in index["parts"] if not (pack / p).is_file()]
    if missing:
        raise FileNotFoundError(f"{pack}: missing part(s) {missing}")
    payload = b"".join((pack / p).read_bytes() for p in index["parts"])

    def stream(name: str) -> bytes:
        a, b = index["streams"][name]
        if b > len(payload):
            raise ValueError(f"{pack}: the parts end before stream {name!r} does (a truncated part?)")
        return payload[a:b]

    written = 0
    bar = progress_bar(total=sum(g["count"] for g in index["groups"]), desc="unpack", disable=not progress)
    for g in index["groups"]:
        raw = lzma.decompress(stream(g["name"]), format=lzma.FORMAT_RAW, filters=_filters(g["width"], g["channels"]))
        shape = (g["count"], g["height"], g["width"]) + (() if g["channels"] == 1 else (g["channels"],))
        arrays = np.frombuffer(raw, dtype=g["dtype"]).reshape(shape)
        for array, rel, digest in zip(arrays, g["paths"], g["digests"], strict=True):
            if _digest(array) != digest:
                raise ValueError(f"{pack}: pixels of {rel} differ from the packed digest")
            out = dst / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out, lambda p, a=array: Image.fromarray(a).save(p, format="PNG"))
            written += 1
            bar.update()
    bar.close()
    blob, pos = lzma.decompress(stream("files")), 0
    for item in index["files"]:
        data = blob[pos : pos + item["bytes"]]
        pos += item["bytes"]
        out = dst / item["path"]
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda p, d=data: p.write_bytes(d))
        written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ferlib.data.pack", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="pack a data-set folder")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--part-mb", type=float, default=15.0, help="largest part, MiB (default 15)")
    u = sub.add_parser("unpack", help="rebuild a packed folder")
    u.add_argument("pack")
    u.add_argument("dst")
    args = ap.parse_args(argv)
    try:
        if args.command == "pack":
            index = pack_folder(args.src, args.dst, args.part_mb)
            total = sum((Path(args.dst) / p).stat().st_size for p in index["parts"])
            n_img = sum(g["count"] for g in index["groups"])
            n_files, n_parts = len(index["files"]), len(index["parts"])
            print(f"packed {n_img} images and {n_files} files into {n_parts} part(s), {total / 2**20:.1f} MiB")
        else:
            print(f"unpacked {unpack_folder(args.pack, args.dst)} files into {args.dst}")
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

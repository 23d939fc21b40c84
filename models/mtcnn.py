"""Convert the MTCNN weights that ship in the MIT-licensed `mtcnn` wheel into ONNX.

Why our own converter: the wheel's networks are Keras models and need TensorFlow, which a
gate image does not carry. The weights themselves are plain numpy arrays (joblib + lz4), so
we rebuild the three small networks node by node with the `onnx` helper API and get graphs
that ONNX Runtime runs directly. Nothing but the arrays is taken from the wheel.

The graphs compute exactly what the wheel's Keras models compute on the wheel's own input:
an RGB image, not transposed, normalised as (x - 127.5) / 128 (see mtcnn/utils/images.py,
`normalize_images`, and the stages, which feed decoded RGB straight in). Three layout rules
make that true and are easy to get wrong:

* Keras stores conv kernels HWIO; ONNX Conv wants OIHW.
* Keras PReLU after a conv shares its slope over H and W (one slope per channel); ONNX PReLU
  broadcasts, so the slope becomes a (C, 1, 1) tensor.
* R-Net and O-Net flatten after `Permute((2, 1, 3))`, i.e. in (W, H, C) order of an NHWC
  tensor. Our graphs run NCHW and flatten in (C, H, W) order, so the rows of the first dense
  kernel are permuted once here instead of adding a transpose to every inference.

Keras "same" max pooling pads at the end first (TensorFlow's rule), which ONNX calls
SAME_UPPER; padded cells never win the max in either runtime.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import joblib
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.manifest import ModelError, ModelFile, ModelManifest, manifest_path, write_manifest

log = logging.getLogger(__name__)

MODEL_NAME = "mtcnn-v1"
SOURCE_PACKAGE = "mtcnn"
SOURCE_URL = "https://github.com/ipazc/mtcnn"
ROLES = ("pnet", "rnet", "onet")
# Opset 13 / IR 7 keep the graphs loadable by the older ONNX Runtime builds that embedded
# gate images tend to carry; nothing newer is needed for conv/pool/dense/softmax.
OPSET = 13
IR_VERSION = 7

Progress = Callable[[str, int, int], None]

INPUT_SPEC = {
    "colour": "RGB",
    "layout": "NCHW float32",
    "normalise": "(x - 127.5) / 128",
    "transpose": "none (rows are image rows, as in mtcnn>=1.0)",
    "pnet": "N x 3 x H x W, any H, W >= 12; outputs reg (N,4,h,w) and prob (N,2,h,w), stride 2, cell 12",
    "rnet": "N x 3 x 24 x 24 crops; outputs reg (N,4) and prob (N,2)",
    "onet": "N x 3 x 48 x 48 crops; outputs reg (N,4), landmarks (N,10) = x1..x5 then y1..y5 "
            "as fractions of the crop, order LANDMARK_NAMES, and prob (N,2)",
    "box_regression": "offsets are fractions of the crop's width/height added to x1, y1, x2, y2",
}


# --- architecture, as read from mtcnn/network/{pnet,rnet,onet}.py -------------------------

@dataclass(frozen=True)
class Conv:
    out: int
    k: int


@dataclass(frozen=True)
class PRelu:
    pass


@dataclass(frozen=True)
class MaxPool:
    k: int
    s: int
    same: bool  # Keras padding="same" (else "valid")


@dataclass(frozen=True)
class Dense:
    out: int


Layer = Conv | PRelu | MaxPool | Dense


@dataclass(frozen=True)
class Head:
    """An output branch: a 1x1 conv (P-Net) or a dense layer (R/O-Net) on the trunk."""

    name: str
    out: int
    softmax: bool


@dataclass(frozen=True)
class NetSpec:
    role: str
    input_hw: tuple[int, int] | None  # None: fully convolutional, dynamic H x W
    trunk: tuple[Layer, ...]
    heads: tuple[Head, ...]  # in the order their weights are stored


NETS = {
    "pnet": NetSpec(
        "pnet", None,
        (Conv(10, 3), PRelu(), MaxPool(2, 2, True), Conv(16, 3), PRelu(), Conv(32, 3), PRelu()),
        (Head("reg", 4, False), Head("prob", 2, True)),
    ),
    "rnet": NetSpec(
        "rnet", (24, 24),
        (Conv(28, 3), PRelu(), MaxPool(3, 2, True), Conv(48, 3), PRelu(), MaxPool(3, 2, False),
         Conv(64, 2), PRelu(), Dense(128), PRelu()),
        (Head("reg", 4, False), Head("prob", 2, True)),
    ),
    "onet": NetSpec(
        "onet", (48, 48),
        (Conv(32, 3), PRelu(), MaxPool(3, 2, True), Conv(64, 3), PRelu(), MaxPool(3, 2, False),
         Conv(64, 3), PRelu(), MaxPool(2, 2, True), Conv(128, 2), PRelu(), Dense(256), PRelu()),
        (Head("reg", 4, False), Head("landmarks", 10, False), Head("prob", 2, True)),
    ),
}


# --- reading the wheel ------------------------------------------------------------------

def source_version() -> str:
    try:
        return importlib.metadata.version(SOURCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError as e:
        raise ModelError(f"the `{SOURCE_PACKAGE}` wheel is not installed; `pip install mtcnn` "
                         f"provides the MIT-licensed weights this converter reads") from e


def source_weights_path(role: str) -> Path:
    """Where the wheel keeps a network's weights, found without importing the package.

    `import mtcnn` pulls in TensorFlow, so the file is located through the installed
    distribution's metadata instead.
    """
    dist = importlib.metadata.distribution(SOURCE_PACKAGE)
    p = Path(str(dist.locate_file(f"mtcnn/assets/weights/{role}.lz4")))
    if not p.is_file():
        raise ModelError(f"{p} is missing from the installed `{SOURCE_PACKAGE}` wheel; reinstall it")
    return p


def load_source_weights(role: str) -> list[np.ndarray]:
    """The Keras weight list of one network, in the order Keras' get_weights() returns it."""
    weights = joblib.load(source_weights_path(role))
    if not isinstance(weights, list) or not all(isinstance(w, np.ndarray) for w in weights):
        raise ModelError(f"{source_weights_path(role)}: expected a list of numpy arrays")
    return [np.asarray(w, dtype=np.float32) for w in weights]


# --- building a graph -------------------------------------------------------------------

class _GraphBuilder:
    """Consumes the Keras weight list in order while emitting the matching ONNX nodes."""

    def __init__(self, spec: NetSpec, weights: list[np.ndarray]):
        self.spec = spec
        self._weights = list(weights)
        self._next = 0
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.tensor = "input"
        self.channels = 3
        self.hw: tuple[int, ...] | None = spec.input_hw  # spatial size while known, for the dense layer's permutation
        self._count = 0
        self._flat_from: tuple[int, int, int] | None = None  # (C, H, W) before flattening

    def _take(self, shape: tuple[int, ...], what: str) -> np.ndarray:
        if self._next >= len(self._weights):
            raise ModelError(f"{self.spec.role}: weight list ends before {what}")
        w = self._weights[self._next]
        if w.shape != shape:
            raise ModelError(f"{self.spec.role}: {what} expects weights of shape {shape}, "
                             f"the wheel has {w.shape} at position {self._next}")
        self._next += 1
        return w

    def _name(self, kind: str) -> str:
        self._count += 1
        return f"{kind}{self._count}"

    def _const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name))
        return name

    def _emit(self, op: str, inputs: list[str], name: str, output: str | None = None, **attrs) -> str:
        out = output or name
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        self.tensor = out
        return out

    def conv(self, layer: Conv, source: str | None = None, output: str | None = None) -> str:
        name = self._name("conv")
        kernel = self._take((layer.k, layer.k, self.channels, layer.out), f"{name} kernel")
        bias = self._take((layer.out,), f"{name} bias")
        w = self._const(f"{name}.weight", kernel.transpose(3, 2, 0, 1))  # HWIO -> OIHW
        b = self._const(f"{name}.bias", bias)
        out = self._emit("Conv", [source or self.tensor, w, b], name, output,
                         kernel_shape=[layer.k, layer.k], strides=[1, 1])
        if source is None:
            self.channels = layer.out
            if self.hw:
                self.hw = (self.hw[0] - layer.k + 1, self.hw[1] - layer.k + 1)
        return out

    def prelu(self) -> str:
        name = self._name("prelu")
        if self._flat_from is None:  # after a conv: one slope per channel, shared over H, W
            alpha = self._take((1, 1, self.channels), f"{name} slope").reshape(self.channels, 1, 1)
        else:  # after a dense layer: one slope per unit
            alpha = self._take((self.channels,), f"{name} slope")
        return self._emit("PRelu", [self.tensor, self._const(f"{name}.slope", alpha)], name)

    def maxpool(self, layer: MaxPool) -> str:
        name = self._name("pool")
        attrs: dict[str, Any] = {"kernel_shape": [layer.k, layer.k], "strides": [layer.s, layer.s]}
        if layer.same:
            attrs["auto_pad"] = "SAME_UPPER"
        if self.hw:
            if layer.same:
                self.hw = tuple(-(-n // layer.s) for n in self.hw)
            else:
                self.hw = tuple((n - layer.k) // layer.s + 1 for n in self.hw)
        return self._emit("MaxPool", [self.tensor], name, **attrs)

    def dense(self, layer: Dense, source: str | None = None, output: str | None = None) -> str:
        name = self._name("dense")
        if self._flat_from is None:
            if not self.hw:
                raise ModelError(f"{self.spec.role}: a dense layer needs a fixed input size")
            c, (h, w) = self.channels, self.hw
            self._flat_from = (c, h, w)
            self._emit("Flatten", [self.tensor], self._name("flatten"), axis=1)
            kernel = self._take((w * h * c, layer.out), f"{name} kernel")
            # Keras flattened (W, H, C) of NHWC after Permute((2, 1, 3)); we flatten (C, H, W).
            kernel = kernel.reshape(w, h, c, layer.out).transpose(2, 1, 0, 3).reshape(c * h * w, layer.out)
        else:
            kernel = self._take((self.channels, layer.out), f"{name} kernel")
        bias = self._take((layer.out,), f"{name} bias")
        out = self._emit("Gemm", [source or self.tensor, self._const(f"{name}.weight", kernel),
                                  self._const(f"{name}.bias", bias)], name, output)
        if source is None:
            self.channels = layer.out
        return out

    def head(self, head: Head, trunk: str) -> None:
        """An output named `head.name`, computed from the trunk's last tensor."""
        raw = head.name + "_logits" if head.softmax else head.name
        if self.spec.input_hw is None:
            self.conv(Conv(head.out, 1), source=trunk, output=raw)
        else:
            self.dense(Dense(head.out), source=trunk, output=raw)
        if head.softmax:
            self._emit("Softmax", [raw], self._name("softmax"), head.name, axis=1)

    def finish(self) -> None:
        if self._next != len(self._weights):
            raise ModelError(f"{self.spec.role}: {len(self._weights) - self._next} weight arrays left "
                             f"unused; the architecture does not match the wheel")


def build_graph(spec: NetSpec, weights: list[np.ndarray], source_version_: str) -> onnx.ModelProto:
    """One network as an ONNX model, checked by onnx's checker."""
    b = _GraphBuilder(spec, weights)
    for layer in spec.trunk:
        if isinstance(layer, Conv):
            b.conv(layer)
        elif isinstance(layer, PRelu):
            b.prelu()
        elif isinstance(layer, MaxPool):
            b.maxpool(layer)
        else:
            b.dense(layer)
    trunk = b.tensor
    for head in spec.heads:
        b.head(head, trunk)
    b.finish()

    h, w = spec.input_hw or ("H", "W")
    graph_input = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, h, w])
    if spec.input_hw is None:
        out_info = [helper.make_tensor_value_info(o.name, TensorProto.FLOAT, ["N", o.out, "h", "w"])
                    for o in spec.heads]
    else:
        out_info = [helper.make_tensor_value_info(o.name, TensorProto.FLOAT, ["N", o.out]) for o in spec.heads]
    graph = helper.make_graph(b.nodes, f"mtcnn_{spec.role}", [graph_input], out_info, b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgegate.models.mtcnn", producer_version="1")
    model.ir_version = IR_VERSION
    model.doc_string = (f"MTCNN {spec.role} converted from the `{SOURCE_PACKAGE}` {source_version_} wheel "
                        f"({SOURCE_URL}, MIT licence). Input: RGB, NCHW, (x - 127.5) / 128.")
    onnx.checker.check_model(model, full_check=True)
    return model


# --- the build --------------------------------------------------------------------------

def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def build(out_dir: Path, progress: Progress | None = None) -> ModelManifest:
    """Convert the wheel's three networks into `out_dir` and write their manifest.

    Output is a pure function of the installed wheel and this converter, so a rebuild is
    byte-identical and the manifest's hashes can be pinned in a gate image.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    version = source_version()
    files: dict[str, ModelFile] = {}
    source_hashes: dict[str, str] = {}
    for i, role in enumerate(ROLES):
        if progress:
            progress(f"convert {role}", i, len(ROLES))
        src = source_weights_path(role)
        source_hashes[f"{role}.lz4"] = hashlib.sha256(src.read_bytes()).hexdigest()
        data = build_graph(NETS[role], load_source_weights(role), version).SerializeToString()
        target = out_dir / f"{MODEL_NAME}-{role}.onnx"
        _write_atomic(target, data)
        files[role] = ModelFile(role=role, file=target.name, sha256=hashlib.sha256(data).hexdigest())
        log.info("wrote %s (%d bytes) from %s", target, len(data), src)
    if progress:
        progress("write manifest", len(ROLES), len(ROLES))
    manifest = ModelManifest(
        name=MODEL_NAME,
        kind="detector",
        format="mtcnn",
        files=files,
        licence="MIT",
        source={"package": SOURCE_PACKAGE, "version": version, "url": SOURCE_URL,
                "weights": "mtcnn/assets/weights/{pnet,rnet,onet}.lz4", "weights_sha256": source_hashes,
                "converter": "edgegate models/mtcnn.py"},
        input=dict(INPUT_SPEC),
    )
    write_manifest(manifest, out_dir)
    return dataclasses.replace(manifest, path=manifest_path(out_dir, MODEL_NAME))

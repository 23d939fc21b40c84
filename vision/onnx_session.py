"""ONNX Runtime sessions built from verified model bytes, for every model kind.

No model is loaded from a path: the runtime gets the bytes that `ModelManifest.read_verified`
hashed, so what runs is exactly what the manifest vouches for.
"""
from __future__ import annotations

import onnxruntime as ort

from models.manifest import ModelError, ModelManifest

# ORT warns on every run when a model's recorded output shapes differ from the actual ones
# (SCRFD exports record 640x640 shapes but run on any size); errors still get through.
_LOG_ERRORS_ONLY = 3


def session_from_bytes(model: bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU session capped at `threads` so a gate's other work keeps its cores.

    Worker threads do not spin while waiting: on a two-core gate, spinning workers fight the
    capture and device threads, and measured on MTCNN at 640x480 two spinning threads took
    18 ms per frame against 8 ms for one thread or for two that sleep.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = _LOG_ERRORS_ONLY
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def verified_session(manifest: ModelManifest, role: str = "model", threads: int = 1) -> ort.InferenceSession:
    """The session for one of a manifest's files; a file ONNX Runtime cannot load is a
    ModelError naming it (its own Fail/InvalidGraph/InvalidProtobuf types mean nothing to staff)."""
    weights = manifest.read_verified(role)
    try:
        return session_from_bytes(weights, threads)
    except Exception as e:
        raise ModelError(f"model {manifest.name!r}: ONNX Runtime cannot load {manifest.file_path(role)}: {e}") from e

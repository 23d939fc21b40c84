"""Presentation-attack detection (liveness): is the face in front of the camera a live person?

`load_pad(manifests)` builds the stage from PAD model manifests (kind "pad"), fusing several
networks into one `PresentationAttackDetector`; `score(frame, face)` gives a `PadScore` for
the detector's face. `fuse_frames` turns one track's per-frame scores into a verdict under a
`PadPolicy`. `pad_report` (vision.pad.evaluate) measures APCER/BPCER on labelled captures.

What this is: a 2D, RGB, single-camera classifier trained on public data, meant to stop
printed photos and replayed screens held to the camera. It is not certified (no iBeta or
ISO/IEC 30107-3 lab test) and does not address 3D masks or injected video; see
docs/security.md.
"""
from vision.pad.fusion import DEFAULT_THRESHOLD, PadPolicy, PadState, PadVerdict, fuse_frames

# The runtime parts pull in onnxruntime and OpenCV; the gate's pure decision core only needs
# the fusion rules above, so the rest loads on first use.
_LAZY = {"ModelOutput": "base", "PadScore": "base", "PresentationAttackDetector": "base", "CropRule": "crop",
         "FusedPad": "runtime", "OnnxPadModel": "runtime", "find_pad_manifests": "runtime", "load_pad": "runtime"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"vision.pad.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vision.pad' has no attribute {name!r}")


__all__ = ["CropRule", "DEFAULT_THRESHOLD", "FusedPad", "ModelOutput", "OnnxPadModel", "PadPolicy", "PadScore",
           "PadState", "PadVerdict", "PresentationAttackDetector", "find_pad_manifests", "fuse_frames", "load_pad"]

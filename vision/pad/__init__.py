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
from vision.pad.base import ModelOutput, PadScore, PresentationAttackDetector
from vision.pad.crop import CropRule
from vision.pad.fusion import DEFAULT_THRESHOLD, PadPolicy, PadState, PadVerdict, fuse_frames
from vision.pad.runtime import FusedPad, OnnxPadModel, find_pad_manifests, load_pad

__all__ = ["CropRule", "DEFAULT_THRESHOLD", "FusedPad", "ModelOutput", "OnnxPadModel", "PadPolicy", "PadScore",
           "PadState", "PadVerdict", "PresentationAttackDetector", "find_pad_manifests", "fuse_frames", "load_pad"]

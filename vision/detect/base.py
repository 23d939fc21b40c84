"""What every detector shares: its manifest format, the registry keyed by it, and `min_face`.

A detector class names the manifest format it runs (`FORMAT`) and lives in the module of that
name (vision/detect/<format>.py); subclassing DetectorBase registers it, and `load_detector`
imports the module for a manifest's format and builds the registered class (the way Frigate
keys its detector plugins by type), so adding a format is one module, not another branch.
"""
from __future__ import annotations

from typing import ClassVar

from models.manifest import ModelError, ModelManifest
from vision.detect.frame import DEFAULT_MIN_FACE

DETECTORS: dict[str, type[DetectorBase]] = {}  # manifest format -> class


class DetectorBase:
    FORMAT: ClassVar[str]

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        DETECTORS[cls.FORMAT] = cls

    def __init__(self, manifest: ModelManifest, min_face: float = DEFAULT_MIN_FACE) -> None:
        if manifest.format != self.FORMAT:
            raise ModelError(f"model {manifest.name!r} has format {manifest.format!r}, not {self.FORMAT!r}")
        if not min_face > 0:
            raise ValueError(f"min_face must be a positive number of pixels, got {min_face}")
        self.name = manifest.name  # the model id
        self.min_face = float(min_face)

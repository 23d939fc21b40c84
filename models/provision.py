"""Manifests for operator-provisioned models (SCRFD, YuNet, ArcFace-style embedders, PAD).

An operator who brings their own model states its format and licence once; from then on it is
sha256-pinned like the built-in ones. The manifest may point at the file where it lies
(absolute path), so large or licence-restricted files need not be copied around.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.align_template import ARCFACE_112
from models.manifest import ModelFile, ModelManifest, sha256_file, write_manifest

# What each provisioned format means for input handling; recorded in the manifest so the
# loaders never guess.
FORMAT_DEFAULTS: dict[str, dict[str, Any]] = {
    "scrfd": {"kind": "detector",
              "input": {"colour": "RGB", "mean": [127.5] * 3, "std": [128.0] * 3, "layout": "NCHW"}},
    "yunet": {"kind": "detector", "input": {"colour": "BGR", "size": [640, 640], "layout": "NCHW"}},
    "arcface": {"kind": "embedder", "input": {"colour": "RGB", "size": [112, 112], "mean": [127.5] * 3,
                                               "std": [127.5] * 3, "layout": "NCHW"}},
    # MiniFASNet (Silent-Face-Anti-Spoofing): BGR bytes as they are (0-255, not divided), on the
    # detector's box enlarged by a per-model factor; 3 logits, class 1 live, 0 and 2 two attack kinds.
    "minifasnet": {"kind": "pad", "input": {"colour": "BGR", "size": [80, 80], "range": [0, 255],
                                             "mean": [0.0] * 3, "std": [1.0] * 3, "layout": "NCHW"},
                   "extra": {"output": {"activation": "softmax", "classes": ["spoof", "live", "spoof"]}}},
}

# Input keys a format cannot default because they differ between models of that format; the
# operator states them when provisioning.
REQUIRED_INPUT: dict[str, dict[str, str]] = {
    "minifasnet": {"crop_scale": "the factor the face box is enlarged by about its centre, as the model was "
                                 "trained: 2.7 for 2.7_80x80_MiniFASNetV2, 4.0 for 4_0_0_80x80_MiniFASNetV1SE "
                                 "(the number leading the reference file name)"},
}


# Pixel normalisations embedders are commonly trained with. Getting this wrong does not crash,
# it silently ruins accuracy (MobileFaceNet fed insightface-style input drops from AUC 1.0 to 0.78
# on our test pairs), so it is stated explicitly when provisioning.
NORMALISATIONS: dict[str, dict[str, Any]] = {
    "symmetric": {"range": [0, 255], "mean": [127.5] * 3, "std": [127.5] * 3},  # insightface ArcFace
    "imagenet": {"range": [0, 1], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}


def provision(file: Path, name: str, fmt: str, licence: str, source: str, out_dir: Path,
              input_overrides: dict[str, Any] | None = None, embedding_size: int | None = None,
              extra: dict[str, Any] | None = None, copy: bool = False, normalisation: str | None = None
              ) -> ModelManifest:
    if fmt not in FORMAT_DEFAULTS:
        raise ValueError(f"unknown model format {fmt!r}; provisionable: {', '.join(FORMAT_DEFAULTS)}")
    if normalisation is not None:
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {normalisation!r}; known: {', '.join(NORMALISATIONS)}")
        input_overrides = {**NORMALISATIONS[normalisation], **(input_overrides or {})}
    inputs = {**FORMAT_DEFAULTS[fmt]["input"], **(input_overrides or {})}
    missing = [f"{k}: {why}" for k, why in REQUIRED_INPUT.get(fmt, {}).items() if k not in inputs]
    if missing:
        raise ValueError(f"a {fmt} model needs input " + "; ".join(missing))
    file = Path(file).resolve()
    if not file.is_file():
        raise FileNotFoundError(f"model file {file} does not exist")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if copy:
        target = out_dir / file.name
        target.write_bytes(file.read_bytes())
        stored = file.name
        digest = sha256_file(target)
    else:
        stored = str(file)
        digest = sha256_file(file)
    d = FORMAT_DEFAULTS[fmt]
    m = ModelManifest(
        name=name, kind=d["kind"], format=fmt, files={"model": ModelFile("model", stored, digest)},
        licence=licence, source={"provisioned": source}, input=inputs,
        align=ARCFACE_112 if fmt == "arcface" else None, embedding_size=embedding_size,
        extra={**d.get("extra", {}), **(extra or {})},
    )
    path = write_manifest(m, out_dir)
    return ModelManifest(**{**m.__dict__, "path": path})


# The Silent-Face-Anti-Spoofing pair as its reference runs it; the crop scale is the number that
# leads each file name. Used by the demo and the benchmarks; an operator provisions each
# file with `gate-models add FILE --format minifasnet --crop-scale S`.
MINIFASNET_PAIR = (
    ("minifasnet-v2", "2.7_80x80_MiniFASNetV2.onnx", 2.7),
    ("minifasnet-v1se", "4_0_0_80x80_MiniFASNetV1SE.onnx", 4.0),
)


def provision_minifasnet_pair(folder: Path, out_dir: Path, licence: str = "Apache-2.0",
                              source: str = "minivision Silent-Face-Anti-Spoofing (ONNX export)"
                              ) -> list[ModelManifest]:
    folder = Path(folder)
    return [provision(folder / file, name, "minifasnet", licence, source, out_dir,
                      input_overrides={"crop_scale": scale})
            for name, file, scale in MINIFASNET_PAIR]

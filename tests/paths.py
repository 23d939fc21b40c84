"""Where the test data beside the repository lives (../shared), and a CI-aware guard.

Under CI=true a missing resource is a failure, never a skip: a green run must mean the
tests really ran.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEGATE_SHARED", REPO.parent / "shared"))
LFW = SHARED / "faces" / "lfw-dev"
LFW_IMAGES = LFW / "images"
LFW_PAIRS = LFW / "pairs.txt"
PAD_SAMPLES = SHARED / "faces" / "pad-samples"
SHARED_MODELS = SHARED / "models"


def require(path: Path) -> Path:
    if not path.exists():
        msg = f"test resource missing: {path} (../shared must sit beside the repository)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def lfw_people(n: int, min_images: int = 1) -> list[Path]:
    """First n identities (sorted) with at least min_images photos."""
    people = []
    for d in sorted(require(LFW_IMAGES).iterdir()):
        if d.is_dir() and len(list(d.glob("*.jpg"))) >= min_images:
            people.append(d)
            if len(people) == n:
                break
    return people

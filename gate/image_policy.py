"""What an installer accepts beyond a valid signature: no downgrade, no other gate's bundle.

A validly signed *older* image is a rollback attack (it brings back whatever the newer one
fixed), and a validly signed bundle built for another gate changes this gate's identity (its
config names another gate id and lane). So the install root keeps `IMAGE_STATE.json`:

- `gate_id`: this gate's identity, taken from the first bundle installed (or from the slot
  already running when an older installer set the root up); every later bundle must list it
  in its signed `gate_ids` and carry a config for it.
- `floor`: the highest `image_version` that was installed and passed its self-test. A bundle
  below it is refused unless a named engineer allows the downgrade with a reason, which is
  written to the gate's audit log first (no downgrade without its record).

The file is written by rename (atomic) and holds no secret; someone with root on the gate can
edit it, which is outside what this defends (see docs/security.md).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from gate.image import BundleManifest, ImageError

STATE_NAME = "IMAGE_STATE.json"


@dataclass(frozen=True)
class ImageState:
    gate_id: str | None = None
    floor: int = 0


@dataclass(frozen=True)
class Downgrade:
    """An explicit, attributed permission to install below the floor."""

    operator: str
    reason: str

    def __post_init__(self) -> None:
        for name in ("operator", "reason"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip() or len(value) > 256:
                raise ImageError(f"a downgrade needs a {name} (1-256 characters)")


def load_state(root: Path) -> ImageState:
    path = Path(root) / STATE_NAME
    if not path.exists():
        return ImageState()
    try:
        d = json.loads(path.read_text())
        return ImageState(gate_id=d.get("gate_id"), floor=int(d.get("floor", 0)))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ImageError(f"{path} is unreadable ({e}); refusing to install without knowing this gate's "
                         "identity and image floor") from None


def save_state(root: Path, state: ImageState) -> None:
    path = Path(root) / STATE_NAME
    tmp = path.with_name(f".{STATE_NAME}.new")
    with open(tmp, "w") as f:
        json.dump(asdict(state), f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_bundle(state: ImageState, manifest: BundleManifest, config_gate_id: str,
                 downgrade: Downgrade | None) -> Downgrade | None:
    """Raise ImageError when the bundle may not go onto this gate; return the downgrade when it
    is a permitted one (the caller records it before installing), None when it is none."""
    if state.gate_id is not None:
        if state.gate_id not in manifest.gate_ids:
            raise ImageError(f"bundle is built for gate(s) {', '.join(manifest.gate_ids)}, this is gate "
                             f"{state.gate_id}; nothing installed")
        if config_gate_id != state.gate_id:
            raise ImageError(f"bundle's config is for gate {config_gate_id}, this is gate {state.gate_id}; "
                             "nothing installed")
    if manifest.image_version < state.floor:
        if downgrade is None:
            raise ImageError(f"bundle image version {manifest.image_version} is older than version {state.floor} "
                             "already installed here (a downgrade); nothing installed. A deliberate downgrade "
                             "needs --allow-downgrade --operator ID --reason TEXT")
        return downgrade
    return None


def initial_state(state: ImageState, manifest: BundleManifest, config_gate_id: str) -> ImageState:
    """The identity a root takes from its first bundle."""
    if state.gate_id is not None:
        return state
    if config_gate_id not in manifest.gate_ids:
        raise ImageError(f"bundle's config is for gate {config_gate_id}, not among its gates "
                         f"{', '.join(manifest.gate_ids)}")
    return ImageState(gate_id=config_gate_id, floor=state.floor)

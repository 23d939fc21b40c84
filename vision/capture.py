"""Camera capture: one reader thread per source that keeps only the newest frame.

A gate must decide on what the camera sees now, not on a queue of stale frames, so the
reader overwrites a single slot and the main loop takes the latest one (the pattern Frigate
uses to keep capture apart from detection). Cameras die, cables get pulled and RTSP streams
stall: the reader reports that through `status`, reopens with exponential back-off, and never
raises into the caller.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import cv2
import numpy as np

from vision.image_io import ImageError, load_image, to_bgr8

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


class SourceError(RuntimeError):
    """The source cannot be opened or stopped delivering frames."""


class FrameSource(Protocol):
    """Anything that yields frames: a camera, a stream, a file, a folder, a generated feed."""

    description: str

    def open(self) -> None: ...
    def read(self) -> np.ndarray | None: ...  # None = end of a finite source
    def close(self) -> None: ...


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR uint8
    index: int  # increases by one per frame delivered by this grabber
    t_capture: float  # time.monotonic() when the reader got it


class OpenCVSource:
    """Camera index (V4L2), RTSP/HTTP URL or video file through cv2.VideoCapture."""

    def __init__(self, source: int | str, width: int | None = None, height: int | None = None,
                 fps: float | None = None, loop: bool = False):
        self.source = source
        self.width, self.height, self.fps, self.loop = width, height, fps, loop
        self.description = f"camera {source}" if isinstance(source, int) else str(source)
        self._cap: cv2.VideoCapture | None = None
        self._is_file = isinstance(source, str) and Path(source).is_file()

    def open(self) -> None:
        backend = cv2.CAP_V4L2 if isinstance(self.source, int) else cv2.CAP_ANY
        cap = cv2.VideoCapture(self.source, backend)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self.description}")
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise SourceError(f"{self.description} is not open")
        ok, img = self._cap.read()
        if not ok:
            if self._is_file:
                if self.loop:
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    ok, img = self._cap.read()
                if not ok:
                    return None
            else:
                raise SourceError(f"{self.description} stopped delivering frames")
        if self._is_file and self.fps:
            time.sleep(1.0 / self.fps)
        return to_bgr8(img)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderSource:
    """A folder of still images played as a camera at a fixed rate (tests, demos, replays)."""

    def __init__(self, folder: str | Path, fps: float = 10.0, loop: bool = False):
        self.folder = Path(folder)
        self.fps, self.loop = fps, loop
        self.description = f"folder {self.folder}"
        self._files: list[Path] = []
        self._i = 0

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"{self.description} does not exist")
        self._files = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._files:
            raise SourceError(f"{self.description} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self._i = 0

    def read(self) -> np.ndarray | None:
        while True:
            if self._i >= len(self._files):
                if not self.loop:
                    return None
                self._i = 0
            p = self._files[self._i]
            self._i += 1
            if self.fps:
                time.sleep(1.0 / self.fps)
            try:
                return load_image(p)
            except ImageError as e:
                log.warning("skipping unreadable frame: %s", e)

    def close(self) -> None:
        self._files = []


def open_source(spec: str | int, fps: float | None = None, loop: bool = False,
                width: int | None = None, height: int | None = None) -> FrameSource:
    """Pick a source from a config value: an int or digit string is a camera index, a folder is
    a folder source, anything else (file path, rtsp://, http://) goes to OpenCV."""
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return OpenCVSource(int(spec), width=width, height=height, fps=fps)
    if isinstance(spec, str) and Path(spec).is_dir():
        return FolderSource(spec, fps=fps or 10.0, loop=loop)
    return OpenCVSource(spec, width=width, height=height, fps=fps, loop=loop)


class FrameGrabber:
    """Runs a source on a daemon thread; the caller takes the newest frame with `latest()`.

    status: "starting" → "ok" ↔ "reconnecting" (with back-off), or "ended" for a finite source.
    """

    def __init__(self, source: FrameSource, backoff_initial_s: float = 0.5, backoff_max_s: float = 10.0,
                 on_status: Callable[[str, str], None] | None = None):
        self.source = source
        self.backoff_initial_s, self.backoff_max_s = backoff_initial_s, backoff_max_s
        self.on_status = on_status
        self.status = "starting"
        self.last_error = ""
        self.frames = 0
        self.reopens = 0
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"capture:{source.description}", daemon=True)

    def start(self) -> "FrameGrabber":
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    def __enter__(self) -> "FrameGrabber":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def latest(self, after_index: int = -1, timeout: float = 0.0) -> Frame | None:
        """The newest frame with index > after_index, waiting up to `timeout` seconds for one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.index <= after_index:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set() or self.status == "ended":
                    f = self._latest
                    return f if f is not None and f.index > after_index else None
                self._cond.wait(remaining)
            return self._latest

    def _set_status(self, status: str, detail: str = "") -> None:
        if status != self.status:
            level = logging.INFO if status in ("ok", "ended") else logging.WARNING
            log.log(level, "capture %s: %s%s", self.source.description, status, f" ({detail})" if detail else "")
            self.status = status
            if self.on_status:
                try:
                    self.on_status(status, detail)
                except Exception:  # a broken observer must not kill capture
                    log.exception("capture status callback failed")
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        backoff = self.backoff_initial_s
        while not self._stop.is_set():
            try:
                self.source.open()
            except Exception as e:  # any driver failure is a reason to retry, never to crash
                self.last_error = str(e)
                self._set_status("reconnecting", str(e))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                self.reopens += 1
                continue
            self._set_status("ok")
            try:
                while not self._stop.is_set():
                    img = self.source.read()
                    if img is None:
                        self._set_status("ended")
                        return
                    with self._cond:
                        self.frames += 1
                        self._latest = Frame(img, self.frames, time.monotonic())
                        self._cond.notify_all()
                    backoff = self.backoff_initial_s
            except Exception as e:
                self.last_error = str(e)
                self._set_status("reconnecting", str(e))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
                self.reopens += 1
            finally:
                try:
                    self.source.close()
                except Exception:
                    log.exception("closing %s failed", self.source.description)

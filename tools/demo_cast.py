"""Who travels in the demo: real people's photos cast into the journey's roles.

Each genuine traveller has two photos of the same person: the older one is the portrait on
their chip ID card (DG2), the other is "today's face", shown to the kiosk camera and to the
lane cameras (a same-day face, which is why the kiosk enrols its live frames). The roles:

    plain        checks in at the kiosk, passes security, boards at their flight's gate
    referred     the kiosk's 1:1 against the card photo falls below its operating point (an
                 old card photo); the counter agent checks the card by eye and approves
    wrong_gate   goes to the other flight's gate first and is refused there, then boards
    gate_change  their flight moves to another gate while they are airside; boards there
    stranger     never enrolled; tries the security lane and is refused

Casting runs each candidate's photos once through the same code the kiosk runs
(kiosk.capture: the quality gate, the PAD pair, the 1:1 against the document photo) and
picks people whose figures are clear of the operating points, in the direction the role
needs: a traveller meant to pass needs a 1:1 above the kiosk's threshold, the referred one
below it. The journey then shows the system's behaviour on those roles; how often a random
traveller lands on either side is what `gate-bench kiosk` and `gate-bench lane` measure
(README, "Speed"), not something a five-person demo can tell.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from tools.feedgen import standing_frames

log = logging.getLogger(__name__)

AIRPORT = "SGN"
AIRPORT_TZ = ZoneInfo("Asia/Ho_Chi_Minh")
KIOSK_SCALE = 1.9  # the kiosk camera is close: ~190-px faces
LANE_SCALE = 1.7  # the lane cameras look from a little further away
CLEAR_OF_THRESHOLD = 0.015  # a cast 1:1 median is at least this far from the kiosk threshold, on the role's side
PAD_CLEAR = 0.6  # cast faces score at least this live (the PAD cut-off is 0.5)

ROLES_FULL = ("plain", "referred", "wrong_gate", "gate_change", "stranger")
ROLES_SMALL = ("referred", "wrong_gate", "gate_change")
STORIES = {
    "plain": "checks in, passes security, boards",
    "referred": "1:1 at the kiosk below the threshold: referred to the counter agent, who approves",
    "wrong_gate": "goes to the other flight's gate first and is refused there",
    "gate_change": "their flight changes gate while they are airside",
    "stranger": "never enrolled; tries the security lane",
}


@dataclass(frozen=True)
class Flight:
    carrier: str
    number: str
    to: str
    first_gate: str  # the gate it is assigned to when boarding opens

    @property
    def code(self) -> str:
        return f"{self.carrier}{self.number}"

    def label(self, day: dt.date) -> str:
        """The flight as `gate-central assign --flight` takes it: VN123-2026-12-02."""
        return f"{self.code}-{day.isoformat()}"


@dataclass(frozen=True)
class Traveller:
    role: str
    name: str  # display name, as on the document
    surname: str
    given: str
    live_photo: Path  # today's face
    doc_photo: Path | None  # the chip's portrait; None: never enrolled
    flight: Flight | None
    number: str | None  # document number
    seed: int  # of their camera frames (the same frames casting scored)
    screened: dict = field(default_factory=dict)  # casting figures: 1:1 median, PAD live

    @property
    def subject_id(self) -> str | None:
        """As the kiosk derives it from a VNM chip document (kiosk.identity)."""
        return None if self.number is None else f"VNM-{self.number}"

    @property
    def first_name(self) -> str:
        """What a timeline label calls them: the given name (last in a Vietnamese name)."""
        words = self.name.split()
        return words[-1] if self.surname.upper() == _fold(words[0]) else words[0]


@dataclass
class Cast:
    travellers: list[Traveller]
    flights: tuple[Flight, Flight]
    day: dt.date  # the flights' local date at the airport
    kiosk_threshold: float
    source: str


def _fold(word: str) -> str:
    import unicodedata

    word = word.replace("Đ", "D").replace("đ", "d")
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c)).upper()


def flights_of_the_day() -> tuple[Flight, Flight]:
    return Flight("VN", "123", "HAN", "SGN-G12"), Flight("VN", "456", "DAD", "SGN-G14")


def _names(folder_name: str) -> tuple[str, str, str] | None:
    """(display name, surname, given) from an LFW folder name; None for names an MRZ and a
    boarding pass cannot carry as they are (hyphens, apostrophes, one word)."""
    words = folder_name.split("_")
    if not 2 <= len(words) <= 3 or not all(re.fullmatch(r"[A-Za-z]{2,}", w) for w in words):
        return None
    return " ".join(words), words[-1], " ".join(words[:-1])


Candidate = tuple[tuple[str, str, str], list[Path], dict]  # (display, surname, given), photos, figures


def _names_of(person: Path) -> tuple[str, str, str]:
    names = _names(person.name)
    if names is None:
        raise ValueError(f"{person.name}: not a name a pass and an MRZ carry")
    return names


class Screen:
    """A candidate's photos through the kiosk's own capture path (kiosk.capture)."""

    def __init__(self, pipeline, pad, threshold: float):
        self.pipeline, self.pad, self.threshold = pipeline, pad, threshold

    def _frames_ok(self, frames) -> list | None:
        from kiosk.capture import live_frame

        out = []
        for f in frames:
            lf = live_frame(self.pipeline, self.pad, f, 0.0)
            if lf.faces != 1 or not lf.quality_ok or lf.template is None:
                return None
            if self.pad is not None and (lf.pad_live is None or lf.pad_live < PAD_CLEAR):
                return None
            out.append(lf)
        return out

    def genuine(self, doc: Path, live: Path, seed: int) -> dict | None:
        """1:1 median and PAD of a traveller's kiosk frames, or None if a photo is unusable."""
        from kiosk.capture import reference_of
        from kiosk.identity import IdentityReference
        from vision.image_io import load_image

        ref = reference_of(self.pipeline, IdentityReference("cast", "cast", load_image(doc), "cast", ()))
        if ref.template is None:
            return None
        kiosk = self._frames_ok(standing_frames(live, n=8, scale=KIOSK_SCALE, seed=seed)[:3:2])
        lane = self._frames_ok(standing_frames(live, n=8, scale=LANE_SCALE, seed=seed + 1)[:1])
        if kiosk is None or lane is None:
            return None
        return {"verify_median": float(np.median([float(np.dot(f.template, ref.template)) for f in kiosk])),
                "pad_live": min(f.pad_live for f in kiosk + lane) if self.pad is not None else None}

    def stranger(self, live: Path, seed: int) -> dict | None:
        lane = self._frames_ok(standing_frames(live, n=8, scale=LANE_SCALE, seed=seed + 1)[:1])
        return None if lane is None else {"pad_live": lane[0].pad_live}


def lfw_cast(images: Path, pipeline, pad, kiosk_threshold: float, roles: tuple[str, ...], seed: int,
             day: dt.date, max_candidates: int = 80) -> Cast:
    from tools.feedgen import one_face

    rng = np.random.default_rng(seed)
    people = sorted(d for d in images.iterdir() if d.is_dir() and _names(d.name))
    order = [people[i] for i in rng.permutation(len(people))]
    screen = Screen(pipeline, pad, kiosk_threshold)
    wanted_pass = sum(r not in ("referred", "stranger") for r in roles)
    passing: list[Candidate] = []
    referred: list[Candidate] = []
    strangers: list[Candidate] = []
    tried = 0
    for person in order:
        photos = sorted(person.glob("*.jpg"))
        done = (len(passing) >= wanted_pass and (len(referred) >= 1 or "referred" not in roles)
                and (strangers or "stranger" not in roles))
        if done or tried >= max_candidates:
            break
        if len(photos) == 1:
            if "stranger" in roles and not strangers and one_face(pipeline.detector, photos[0]):
                tried += 1
                figures = screen.stranger(photos[0], seed=tried * 10)
                if figures is not None:
                    strangers.append((_names_of(person), photos[:1], {**figures, "seed": tried * 10}))
            continue
        if not (one_face(pipeline.detector, photos[0]) and one_face(pipeline.detector, photos[1])):
            continue
        tried += 1
        figures = screen.genuine(photos[0], photos[1], seed=tried * 10)
        if figures is None:
            continue
        entry = (_names_of(person), photos[:2], {**figures, "seed": tried * 10})
        if figures["verify_median"] >= kiosk_threshold + CLEAR_OF_THRESHOLD and len(passing) < wanted_pass:
            passing.append(entry)
        elif figures["verify_median"] <= kiosk_threshold - CLEAR_OF_THRESHOLD and not referred:
            referred.append(entry)
    missing = [r for r, pool, n in (("passing", passing, wanted_pass), ("referred", referred, int("referred" in roles)),
                                    ("stranger", strangers, int("stranger" in roles))) if len(pool) < n]
    if missing:
        raise RuntimeError(f"casting: no LFW people found for {', '.join(missing)} among {tried} candidates")
    log.info("casting screened %d candidates", tried)
    ordinary = iter(passing)
    chosen = {r: referred if r == "referred" else strangers if r == "stranger" else [next(ordinary)] for r in roles}
    return _assign(roles, chosen, kiosk_threshold, day, f"LFW photos from {images}")


def _assign(roles: tuple[str, ...], chosen: dict[str, list[Candidate]], threshold: float, day: dt.date,
            source: str) -> Cast:
    """Travellers in story order, each role taking the next of its chosen candidates; genuine
    photos are [card, today], a stranger's [today]."""
    vn123, vn456 = flights_of_the_day()
    flight_of = {"plain": vn123, "referred": vn456, "wrong_gate": vn456, "gate_change": vn123}
    pools = {role: iter(c) for role, c in chosen.items()}
    travellers = []
    for n, role in enumerate(roles):
        (display, surname, given), photos, figures = next(pools[role])
        enrolled = role != "stranger"
        travellers.append(Traveller(
            role=role, name=display, surname=surname, given=given, live_photo=photos[-1],
            doc_photo=photos[0] if enrolled else None, flight=flight_of.get(role), seed=figures.get("seed", n * 10),
            number=f"{79200100 + n:09d}" if enrolled else None,
            screened={k: v for k, v in figures.items() if k != "seed"}))
    return Cast(travellers, (vn123, vn456), day, threshold, source)


def insightface_cast(work: Path, pipeline, pad, kiosk_threshold: float, roles: tuple[str, ...], day: dt.date) -> Cast:
    """Without ../shared: the faces of the group photo inside the insightface wheel, each cut out
    as its own person, screened like the LFW cast where enough faces pass. Today's face
     is the cut-out mirrored; the referred traveller's card photo is a small, heavily compressed
    print of it (an old card), which the 1:1 may or may not fall below: the run says which.
    The photo's faces are small and few pass the screen: the plain traveller is left out when
    the story's roles need them all, and any role still short takes a face as it is (the run
    then shows what the models make of it)."""
    import cv2
    import insightface

    from vision.image_io import decode_image, load_image

    img = load_image(Path(insightface.__file__).parent / "data" / "images" / "t1.jpg")
    faces = sorted(pipeline.detector.detect(img), key=lambda f: f.box[0])
    folder = work / "people"
    folder.mkdir(parents=True, exist_ok=True)
    names = iter([("Nguyễn Văn An", "NGUYEN", "VAN AN"), ("Trần Thị Bình", "TRAN", "THI BINH"),
                  ("Lê Minh Châu", "LE", "MINH CHAU"), ("Phạm Quốc Dũng", "PHAM", "QUOC DUNG"),
                  ("Hoàng Thu Hà", "HOANG", "THU HA"), ("Vũ Hải Giang", "VU", "HAI GIANG"),
                  ("Đặng Thảo Linh", "DANG", "THAO LINH"), ("Bùi Đức Minh", "BUI", "DUC MINH")])
    screen = Screen(pipeline, pad, kiosk_threshold)
    people: list[Candidate] = []
    unscreened: list[Candidate] = []  # taken when too few pass: the run then shows what the models make of them
    for i, f in enumerate(faces):
        x1, y1, x2, y2 = f.box
        w, h = x2 - x1, y2 - y1
        crop = cv2.resize(img[max(0, int(y1 - h)): int(y2 + h), max(0, int(x1 - w)): int(x2 + w)], (250, 250))
        doc, live = folder / f"person_{i}_card.jpg", folder / f"person_{i}_today.jpg"
        cv2.imwrite(str(doc), crop)
        cv2.imwrite(str(live), cv2.flip(crop, 1))
        figures = screen.genuine(doc, live, seed=i * 10)
        who = next(names, (f"Traveller {i}", "TRAVELLER", f"NUMBER {i}"))
        (people if figures is not None else unscreened).append((who, [doc, live], {**(figures or {}), "seed": i * 10}))
    genuine_roles = [r for r in roles if r != "stranger"]
    if len(people) < len(genuine_roles) and "plain" in roles:  # the story can do without the plain traveller
        roles = tuple(r for r in roles if r != "plain")
    people += unscreened
    if len(people) < len(roles):
        raise RuntimeError(f"the insightface group photo holds {len(people)} usable faces; the cast needs {len(roles)}")
    # the roles the story turns on get the faces that passed the screen first
    priority = sorted(roles, key=lambda r: ("referred", "wrong_gate", "gate_change", "plain", "stranger").index(r))
    chosen: dict[str, list[Candidate]] = {}
    for role, (names_, photos, figures) in zip(priority, people, strict=False):
        if role == "referred":
            small = cv2.resize(load_image(photos[0]), (60, 60), interpolation=cv2.INTER_AREA)
            _, jpg = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 15])
            cv2.imwrite(str(photos[0]), cv2.resize(decode_image(jpg.tobytes()), (250, 250)))
        chosen.setdefault(role, []).append((names_, photos if role != "stranger" else photos[1:], figures))
    return _assign(roles, chosen, kiosk_threshold, day,
                   "faces of the group photo shipped in the insightface wheel (../shared not found)")

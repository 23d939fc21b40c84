"""A lane camera with passengers who walk up, read the lane's display and react, made from real photos.

The first `gate-bench lane` feed was a recording: every passenger appeared at close range out
of an empty frame, stood still as a photograph for 2.9 s whatever the lane did, and left. A
lane measured on it cannot be better than that script: a prompt ("look at the camera", "step
closer") changed nothing, a traveller was gone before a retry could finish, and the next
passenger's face stepped into the previous one's track. A real passenger:

- walks in from the queue, ~2.5 m away (face ~40 px, too small to detect) to the standing
  position at ~0.5 m (face ~200 px at 640x480, as the old feed's close-up), slowing down
  (an ease-out over `walk_in_s`); some stop short (`short_stop_p`) and need "step closer";
- is never still: the head sways a few pixels, turns slightly in the image plane and the
  distance breathes by a percent or two; the sensor adds noise and the camera's MJPEG stream
  compresses every frame;
- reads the display: after a reaction time (0.6–1.2 s: reading a prompt and moving, not a
  reflex) "step closer" brings them to the standing position and any "look at the camera"
  prompt makes them look again, which the feed shows as their next photo (`takes`, see below);
  a final answer (pass, see staff, not recognised) sends them through the gate (the passage
  sensor fires `walk_through_s` after the opening) or aside; with no answer they give up after
  `patience_s`;
- is followed by the next in the queue once they have left the camera's view.

What a new look is: the feed has no video of these people, so "looking again" cannot be drawn
from the same photo (a head tilted up in a news photo cannot be made to face the camera). The
next *take* is another real photo of the same person (LFW holds several of most people
enrolled here). It changes pose, expression, glasses — what a prompt asks for — but also the
light, the day and the camera, so a retry in this feed is closer to an independent second try
than a real second look in the same lane is. `takes=1` gives a passenger who can only move
(position, sway), never look differently: the conservative bound. Strangers respond the same
way, with their own other photos, so an impostor gets as many fresh tries as a traveller.

The PAD models see the photo pasted on a defocused copy of itself (`tools.feedgen._scene`);
the further away the face, the more of that synthetic surround their 2.7x/4x crops hold, and
the more they doubt it (measured: BPCER 31 % with the face at 140 px, 11 % at 205 px, 11 % on
the bare photo). That is a limit of building a camera out of photos; the figures say so.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from tools.feedgen import FRAME_H, FRAME_W, _feathered, _scene

log = logging.getLogger(__name__)

# Display texts are read as a person reads them: by colour and buzzer (see gate.lane's entry
# actions), never by the lane's internal state. A prompt is amber with a short beep; the green
# "please pass" comes with the unlock; a long beep, an alarm or a red display is final.
PROMPT = "prompt"
FINAL = "final"
PASS = "pass"


@dataclass(frozen=True)
class Traveller:
    label: str  # "enrolled" or "not_enrolled"
    takes: tuple[str, ...]  # photo paths: how they arrive, then each new look at the camera
    subject_id: str | None = None  # ground truth, when enrolled
    stops_short: bool | None = None  # None: as often as Behaviour.short_stop_p says


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """How people move at a lane. Distances in metres from the camera, times in seconds."""

    start_m: float = 2.5  # where they come from (the queue line)
    stand_m: float = 0.5  # the marked standing position
    stand_sd_m: float = 0.04  # how exactly people stop on the mark
    short_stop_p: float = 0.15  # share who stop short of the mark
    short_stop_m: tuple[float, float] = (0.7, 0.8)
    walk_in_s: float = 2.0  # queue line to standing position, slowing down
    reaction_s: tuple[float, float] = (0.6, 1.2)  # a prompt on the display → the body responds
    move_s: float = 0.6  # stepping closer
    read_final_s: float = 0.8  # reading a refusal before turning away
    leave_s: float = 0.8  # turning away / walking through out of view
    walk_through_s: float = 1.5  # the opening → the passage sensor (as the old feed's sim passage)
    patience_s: float = 12.0  # standing without an answer before giving up (beyond the lane's own timeout)
    gap_s: tuple[float, float] = (0.3, 0.8)  # the previous one out of view → the next one sets off
    sway_px: float = 3.0
    roll_deg: float = 1.5
    breathing: float = 0.015  # relative distance change while standing
    noise_sd: float = 2.0  # sensor noise, grey levels
    jpeg_quality: int = 90  # the camera's MJPEG stream
    stand_scale: float = 1.9  # photo scale at stand_m: a 250-px LFW photo's face ~205 px


class Display(Protocol):
    """What the passenger can see of the lane: display texts and the barrier."""

    def read(self) -> list[tuple[float, str, str | None]]: ...  # new (time, kind, text) since the last read


class SimDisplay:
    """The simulated turnstile's acknowledged commands, read as a passenger sees them."""

    def __init__(self, driver) -> None:
        self.driver = driver
        self._seen = 0

    def read(self) -> list[tuple[float, str, str | None]]:
        cmds = list(self.driver.commands)  # appended under the driver's lock; a copy is consistent
        new, self._seen = cmds[self._seen:], len(cmds)
        out: list[tuple[float, str, str | None]] = []
        for c in new:
            if c.name == "unlock":
                out.append((c.at, PASS, None))
            elif c.name == "indicate":
                kind = classify(str(c.args.get("colour")), str(c.args.get("buzzer")))
                if kind is not None:
                    out.append((c.at, kind, c.args.get("text")))
        return out


def classify(colour: str, buzzer: str) -> str | None:
    """A display change as a passenger reads it (None: nothing to act on, e.g. "hold still")."""
    if colour == "amber" and buzzer == "short":
        return PROMPT
    if colour in ("red", "amber") or buzzer in ("long", "alarm"):
        return FINAL
    return None


@dataclass
class Visit:
    """One passenger's time in front of the camera, as the feed recorded it (ground truth)."""

    label: str
    subject_id: str | None
    first_frame: int = -1  # first frame showing their face
    last_frame: int = -1
    first_t: float = math.nan  # capture time (time.monotonic) of the first frame
    last_t: float = math.nan
    set_off_t: float = math.nan  # when they left the queue line
    at_mark_t: float = math.nan  # when they reached where they stopped
    outcome: str = ""  # what they were told: passed / refused (see staff, not recognised) / gave_up
    prompts: list[str] = field(default_factory=list)
    takes_shown: int = 1
    stopped_short: bool = False

    def to_record(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.__dict__.items()}


def _ease_out(u: float) -> float:
    u = min(1.0, max(0.0, u))
    return 1.0 - (1.0 - u) ** 2


class _Take:
    """One photo, ready to draw: the photo, its feathered mask and its scene."""

    def __init__(self, path: str) -> None:
        img = cv2.imread(path)
        if img is None:
            raise FileNotFoundError(f"cannot read passenger photo {path}")
        self.img = img
        self.mask = _feathered(img)[:, :, 0]
        self.scene = _scene(img)


class _Passenger:
    """One traveller's state machine, driven by the time and the display."""

    def __init__(self, who: Traveller, visit: Visit, b: Behaviour, rng: np.random.Generator, t0: float) -> None:
        self.who, self.visit, self.b, self.rng = who, visit, b, rng
        self.takes = [_Take(p) for p in who.takes]
        self.take = 0
        short = rng.random() < b.short_stop_p
        if who.stops_short is not None:
            short = who.stops_short
        visit.stopped_short = bool(short)
        self.stop_m = float(rng.uniform(*b.short_stop_m) if short else
                            max(0.35, rng.normal(b.stand_m, b.stand_sd_m)))
        self.t0 = t0
        visit.set_off_t = t0
        self.cx0 = FRAME_W // 2 + int(rng.integers(-40, 41))  # where in the lane they walk up
        self.cx_stand = FRAME_W // 2 + int(rng.integers(-25, 26))
        self.phase = "walk_in"
        self.phase_t = t0
        self.move_from_m = self.stop_m
        self.pending: list[tuple[float, str, str | None]] = []  # reactions due (time, kind, text)
        self.sway_phase = rng.uniform(0, 2 * math.pi, size=4)
        self.sway_hz = rng.uniform(0.25, 0.6, size=4)
        self.exit_dir = 1 if rng.random() < 0.5 else -1

    # ---- what they do
    def see(self, now: float, events: list[tuple[float, str, str | None]]) -> None:
        if self.phase in ("through", "leave", "gone"):
            return
        for _at, kind, text in events:
            if kind == PASS:
                self.visit.outcome = "passed"
                self.phase, self.phase_t = "through", now
                self.pending.clear()
                return
            if kind == FINAL:
                self.visit.outcome = f"told: {text}"
                self.pending = [(now + self.b.read_final_s, FINAL, text)]
                return
            if kind == PROMPT:
                self.visit.prompts.append(str(text))
                self.pending.append((now + float(self.rng.uniform(*self.b.reaction_s)), PROMPT, text))

    def act(self, now: float) -> None:
        b = self.b
        if self.phase == "walk_in" and now - self.phase_t >= b.walk_in_s:
            self.phase, self.phase_t = "stand", now
            self.visit.at_mark_t = now
        if self.phase == "closer" and now - self.phase_t >= b.move_s:
            self.phase, self.phase_t = "stand", now
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for _, kind, text in due:
            if kind == FINAL:
                self.phase, self.phase_t = "leave", now
                return
            if self.phase not in ("stand", "closer"):
                continue
            if "closer" in str(text).lower():
                if self.stop_m > b.stand_m + 0.05:  # on the mark already: nothing to do
                    self.move_from_m = self.distance(now)
                    self.stop_m = max(0.35, float(self.rng.normal(b.stand_m, b.stand_sd_m)))
                    self.phase, self.phase_t = "closer", now
            elif len(self.takes) > 1:  # looks at the camera again: the next take
                self.take = (self.take + 1) % len(self.takes)
                self.visit.takes_shown += 1
        if self.phase == "stand" and not math.isnan(self.visit.at_mark_t) and \
                now - self.visit.at_mark_t >= b.patience_s and not self.visit.outcome:
            self.visit.outcome = "gave_up"
            self.phase, self.phase_t = "leave", now
        if self.phase in ("through", "leave") and now - self.phase_t >= b.leave_s:
            self.phase = "gone"

    # ---- where they are
    def distance(self, now: float) -> float:
        b = self.b
        if self.phase == "walk_in":
            return b.start_m + (self.stop_m - b.start_m) * _ease_out((now - self.phase_t) / b.walk_in_s)
        if self.phase == "closer":
            return self.move_from_m + (self.stop_m - self.move_from_m) * _ease_out((now - self.phase_t) / b.move_s)
        d = self.stop_m * (1.0 + b.breathing * math.sin(2 * math.pi * self.sway_hz[3] * now + self.sway_phase[3]))
        if self.phase == "through":  # steps forward past the camera
            d *= 1.0 - 0.3 * min(1.0, (now - self.phase_t) / b.leave_s)
        return d

    def draw(self, canvas: np.ndarray, now: float) -> bool:
        """Draw the passenger into `canvas`; False when no part of them is in view."""
        if self.phase == "gone":
            return False
        b = self.b
        take = self.takes[self.take]
        d = self.distance(now)
        scale = b.stand_scale * b.stand_m / d
        a = _ease_out((now - self.t0) / b.walk_in_s)
        cx = self.cx0 + (self.cx_stand - self.cx0) * a
        cy = FRAME_H / 2 + (1 - a) * 30
        w = [math.sin(2 * math.pi * self.sway_hz[i] * now + self.sway_phase[i]) for i in range(3)]
        cx += b.sway_px * w[0]
        cy += 0.6 * b.sway_px * w[1]
        roll = b.roll_deg * w[2]
        if self.phase in ("through", "leave"):
            u = min(1.0, (now - self.phase_t) / b.leave_s)
            cx += self.exit_dir * u * (FRAME_W * 0.75)
        canvas[:] = take.scene
        return _paste_face(canvas, take, scale, cx, cy, roll)


def _paste_face(canvas: np.ndarray, take: _Take, scale: float, cx: float, cy: float, roll_deg: float) -> bool:
    """Scale and turn the photo about its centre and blend it into the canvas at (cx, cy)."""
    h, w = take.img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), roll_deg, scale)
    ow, oh = int(math.ceil(w * scale)), int(math.ceil(h * scale))
    m[0, 2] += ow / 2 - w / 2
    m[1, 2] += oh / 2 - h / 2
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.warpAffine(take.img, m, (ow, oh), flags=interp, borderMode=cv2.BORDER_REPLICATE)
    mask = cv2.warpAffine(take.mask, m, (ow, oh), flags=cv2.INTER_LINEAR, borderValue=0.0)
    x0, y0 = int(round(cx - ow / 2)), int(round(cy - oh / 2))
    x1, y1 = max(0, x0), max(0, y0)
    x2, y2 = min(FRAME_W, x0 + ow), min(FRAME_H, y0 + oh)
    if x2 <= x1 or y2 <= y1:
        return False
    sub = canvas[y1:y2, x1:x2].astype(np.float32)
    im = img[y1 - y0: y2 - y0, x1 - x0: x2 - x0].astype(np.float32)
    mm = mask[y1 - y0: y2 - y0, x1 - x0: x2 - x0][:, :, None]
    canvas[y1:y2, x1:x2] = (sub * (1 - mm) + im * mm).astype(np.uint8)
    return True


class LaneFeed:
    """A `vision.capture.FrameSource` of a queue of `Traveller`s reacting to `display`.

    Frames come at `fps` in real time (a camera does not wait for the lane); `visits` is the
    ground truth, filled in as the feed runs. Ends `tail_s` after the last passenger left.
    """

    description = "lane feed (passengers reacting to the display)"

    def __init__(self, travellers: list[Traveller], display: Display | None, *, fps: float = 15.0,
                 behaviour: Behaviour | None = None, seed: int = 0, lead_in_s: float = 2.0,
                 tail_s: float = 1.5, passage=None) -> None:
        self.travellers = list(travellers)
        self.display = display
        self.fps = fps
        self.b = behaviour or Behaviour()
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.lead_in_s, self.tail_s = lead_in_s, tail_s
        self.passage = passage  # called with the delay (s) when a passenger walks through an opening
        self.visits: list[Visit] = [Visit(t.label, t.subject_id) for t in self.travellers]
        self.frame_t: list[float] = []
        self._empty = np.full((FRAME_H, FRAME_W, 3), 110, np.uint8)
        self._noise = [self.rng.normal(0, self.b.noise_sd, (FRAME_H, FRAME_W, 3)).astype(np.int16)
                       for _ in range(8)]
        self._lock = threading.Lock()
        self._t0 = 0.0
        self._i = 0  # frames delivered
        self._next = 0  # index of the next traveller to set off
        self._current: _Passenger | None = None
        self._next_start = 0.0
        self._ended_at: float | None = None

    def open(self) -> None:
        if self._t0:  # reopened after a failed read: the passengers' clock goes on
            return
        self._t0 = time.monotonic()
        self._next_start = self._t0 + self.lead_in_s

    def close(self) -> None:
        pass

    @property
    def done(self) -> bool:
        return self._ended_at is not None

    def read(self) -> np.ndarray | None:
        due = self._t0 + self._i / self.fps
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        else:  # running late (a loaded machine): a camera drops frames rather than queue them
            self._i = int((now - self._t0) * self.fps)
        now = time.monotonic()
        try:
            frame = self._render(now)
        except Exception:  # the capture thread would only see "reconnecting": say what broke
            log.exception("the lane feed failed to draw frame %d", self._i)
            raise
        if frame is None:
            return None
        self._i += 1
        self.frame_t.append(now)
        return frame

    def _render(self, now: float) -> np.ndarray | None:
        events = self.display.read() if self.display is not None else []
        p = self._current
        if p is None and self._next < len(self.travellers) and now >= self._next_start:
            # each passenger's own generator: the same stops, sways and reaction times in every run
            rng = np.random.default_rng([self.seed, self._next])
            p = self._current = _Passenger(self.travellers[self._next], self.visits[self._next], self.b, rng, now)
            self._next += 1
        if p is None and self._next >= len(self.travellers):
            if self._ended_at is None:
                self._ended_at = now
            if now - self._ended_at >= self.tail_s:
                return None
        canvas = self._empty.copy()
        if p is not None:
            was = p.phase
            p.see(now, events)
            if p.phase == "through" and was != "through" and self.passage is not None:
                self.passage(self.b.walk_through_s)
            p.act(now)
            if p.draw(canvas, now):
                v = p.visit
                index = len(self.frame_t)
                if v.first_frame < 0:
                    v.first_frame, v.first_t = index, now
                v.last_frame, v.last_t = index, now
            elif p.phase == "gone":
                self._current = None
                self._next_start = now + float(p.rng.uniform(*self.b.gap_s))
                canvas = self._empty.copy()
        noisy = canvas.astype(np.int16) + self._noise[int(self.rng.integers(len(self._noise)))]
        frame = np.clip(noisy, 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.b.jpeg_quality])
        return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else frame

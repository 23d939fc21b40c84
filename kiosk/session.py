"""One traveller at the enrolment station, as a state machine with no I/O.

    AWAIT_PASS --pass--> AWAIT_IDENTITY --reference--> CAPTURING --enough good frames-->
        1:1 >= threshold and PAD live ........................ PUBLISHING --reply--> ENROLLED
        1:1 below it, PAD doubt, name mismatch, timeout ...... REFERRED --agent approves--> PUBLISHING
                                                                        --agent declines--> CLOSED

The daemon (kiosk.daemon) feeds it events — a scanned pass, an identity reference with its
template, one `LiveFrame` per processed camera frame (figures and a template, never pixels),
an agent's decision, the central's reply, the clock — and carries out the actions it returns:
show guidance, write audit, send the enrolment. So every rule here is tested on real photos
without a camera, a socket or a thread.

Why a referral rather than a refusal: a traveller the station cannot verify (a ten-year-old
card photo, glasses, a PAD doubt on a bright hall) still has to fly; the counter agent checks
the document by eye and may approve with their operator id and a reason, both audited. A
different person presenting someone's card ends at the agent too, which is where it should.
"""
from __future__ import annotations

import datetime as dt
import enum
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from devices.bcbp import BcbpError, BcbpLeg, BoardingPass, parse_bcbp
from sync.scopes import checkpoint_scope, departure_validity_end, flight_scope


class State(enum.Enum):
    AWAIT_PASS = "await_pass"
    AWAIT_IDENTITY = "await_identity"
    CAPTURING = "capturing"
    REFERRED = "referred"
    PUBLISHING = "publishing"
    ENROLLED = "enrolled"
    CLOSED = "closed"  # refused, declined by the agent, abandoned or failed to publish


@dataclass(frozen=True)
class StationRules:
    airport: str  # IATA code of the station's airport
    airport_tz: dt.tzinfo
    departure_grace: dt.timedelta  # validity ends this long after the flight's local day
    threshold_1to1: float  # high-security operating point: gate-eval at FMR 1e-4 on calibration data
    ambiguous_margin: float = 0.03  # below threshold by less than this: "ambiguous", else "failed"
    frames_needed: int = 5  # quality-passing frames before deciding
    enrol_frames: int = 3  # best live frames enrolled beside the reference
    target_inter_eye_px: float = 40.0  # guidance asks to step closer below this
    pad_threshold: float = 0.5
    pad_required: bool = True
    capture_timeout_s: float = 30.0
    max_days_ahead: int = 1  # passes for flights later than this are refused (too early to enrol)
    # what the embedder is known to do badly (models.registry.KNOWN_LIMITS), told to the agent with
    # every referral for a low 1:1 score: the default one is weak across large age gaps
    verify_limit: str = ""
    operating_point: str = ""  # where threshold_1to1 came from, e.g. "FMR 1e-4 record on LFW dev folds"


@dataclass(frozen=True)
class LiveFrame:
    """What vision saw in one camera frame (kiosk.capture builds it); no pixels."""

    t: float
    faces: int  # faces large enough to matter (a bystander far behind does not count)
    quality_ok: bool = False
    reasons: tuple[str, ...] = ()
    figures: dict = field(default_factory=dict)
    template: np.ndarray | None = None
    pad_live: float | None = None


@dataclass(frozen=True)
class Reference:
    subject_id: str
    display_name: str
    source: str
    verified: tuple[str, ...]
    template: np.ndarray | None  # None: no usable face in the reference photo
    problem: str = ""  # why there is no template


@dataclass(frozen=True)
class Guide:
    message: str


@dataclass(frozen=True)
class Audit:
    body: dict


@dataclass(frozen=True)
class Publish:
    subject_id: str
    display_name: str
    scopes: tuple[str, ...]
    departure_airport: str
    valid_until: dt.datetime
    templates: np.ndarray  # (n, D): best live frames, then the reference


@dataclass(frozen=True)
class Refer:
    reason: str
    detail: str = ""  # for the agent: the scores behind a 1:1 referral and what they may mean


Action = Guide | Audit | Publish | Refer

GUIDANCE = {
    "none": "Please stand in front of the camera",
    "several": "One person at a time, please",
    "closer": "Please step closer",
    "look": "Please look straight at the camera",
    "still": "Please hold still",
    "dark": "Please face the light",
    "bright": "Please step out of the direct light",
    "cover": "Please uncover your face",
    "hold": "Hold still, taking your photo",
}


def guidance(frame: LiveFrame, rules: StationRules) -> str:
    """One instruction from the quality reasons and face size, most actionable first."""
    if frame.faces == 0:
        return GUIDANCE["none"]
    if frame.faces > 1:
        return GUIDANCE["several"]
    r = set(frame.reasons)
    if "face_too_small" in r or frame.figures.get("inter_eye_px", 1e9) < rules.target_inter_eye_px:
        return GUIDANCE["closer"]
    if r & {"pose_yaw", "pose_pitch"}:
        return GUIDANCE["look"]
    if "blurred" in r:
        return GUIDANCE["still"]
    if "too_dark" in r:
        return GUIDANCE["dark"]
    if r & {"too_bright", "exposure_clipped"}:
        return GUIDANCE["bright"]
    if r:
        return GUIDANCE["cover"]
    return GUIDANCE["hold"]


def _frame_rank(f: LiveFrame) -> float:
    """Higher is better: sharp, large, frontal. Sharpness saturates (variance of the Laplacian
    above ~200 is noise, not detail) so a noisy frame does not win on noise."""
    fig = f.figures
    return (min(fig.get("sharpness", 0.0), 200.0) / 200.0 + min(fig.get("inter_eye_px", 0.0), 80.0) / 80.0
            - (abs(fig.get("yaw_deg", 0.0)) + abs(fig.get("pitch_deg", 0.0))) / 90.0)


def _ascii_upper(text: str) -> str:
    text = text.replace("Đ", "D").replace("đ", "d")
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).upper()


def names_agree(pass_name: str, display_name: str) -> bool:
    """The pass's surname is one of the words of the reference's name, without diacritics:
    "NGUYEN/VAN AN" agrees with "Nguyễn Văn An" (and with "An Nguyen"). Given names are not
    compared: airlines truncate them to fit 20 characters."""
    surname = pass_name.partition("/")[0].replace(" ", "")
    words = _ascii_upper(display_name).replace("-", " ").split()
    return bool(surname) and (surname in words or surname == "".join(words))


class Session:
    def __init__(self, rules: StationRules, model_id: str, started: float):
        self.rules = rules
        self.model_id = model_id
        self.state = State.AWAIT_PASS
        self.started = started
        self.capture_started = 0.0
        self.boarding_pass: BoardingPass | None = None
        self.leg: BcbpLeg | None = None
        self.flight_date: dt.date | None = None
        self.valid_until: dt.datetime | None = None
        self.reference: Reference | None = None
        self.good: list[LiveFrame] = []
        self.frames_seen = 0
        self.scores: list[float] = []
        self.pad_mean: float | None = None
        self.referral: str = ""
        self.referral_detail: str = ""
        self.outcome: str = ""
        self._last_guide = ""

    # ----- helpers ---------------------------------------------------------------------------

    def _journey(self) -> tuple[Reference, BcbpLeg, dt.date, dt.datetime]:
        """The pass and reference a decision needs; only called once both are in."""
        if self.reference is None or self.leg is None or self.flight_date is None or self.valid_until is None:
            raise RuntimeError(f"session in {self.state.value} has no pass or reference yet")
        return self.reference, self.leg, self.flight_date, self.valid_until

    def _record(self, event: str, **extra) -> Audit:
        body: dict[str, Any] = {"event": event, "state": self.state.value, "model": self.model_id}
        if self.leg is not None:
            body["flight"] = self.leg.flight
            body["flight_date"] = self.flight_date.isoformat() if self.flight_date else None
            body["from"] = self.leg.from_airport
            body["to"] = self.leg.to_airport
        if self.reference is not None:
            body["subject_id"] = self.reference.subject_id
            body["reference_source"] = self.reference.source
            body["reference_verified"] = list(self.reference.verified)
        if self.scores:
            body["verify_scores"] = [round(s, 4) for s in self.scores]
            body["verify_median"] = round(float(np.median(self.scores)), 4)
            body["threshold_1to1"] = self.rules.threshold_1to1
        if self.pad_mean is not None:
            body["pad_live_mean"] = round(self.pad_mean, 4)
        body["frames_seen"] = self.frames_seen
        body["frames_good"] = len(self.good)
        body.update(extra)
        return Audit(body)

    def _close(self, outcome: str, **extra) -> list[Action]:
        self.state = State.CLOSED
        self.outcome = outcome
        return [self._record("kiosk_attempt", outcome=outcome, **extra)]

    def _refer(self, reason: str, detail: str = "") -> list[Action]:
        self.state = State.REFERRED
        self.referral = reason
        self.referral_detail = detail
        body = {"reason": reason, **({"detail": detail} if detail else {})}
        return [self._record("kiosk_referred", **body), Refer(reason, detail),
                Guide("Please see the agent at the counter")]

    def _verify_detail(self, median: float) -> str:
        """Why a 1:1 referral happened, in the agent's words: the score, the threshold and its
        operating point, and the embedder's known weakness (an old ID photo) when it has one."""
        r = self.rules
        parts = [f"median 1:1 score {median:.3f} over {len(self.scores)} frames, threshold {r.threshold_1to1:.3f}"
                 + (f" ({r.operating_point})" if r.operating_point else "")]
        if r.verify_limit:
            parts.append(r.verify_limit)
        return "; ".join(parts)

    def _publish(self, approved_by: str | None = None, reason: str | None = None) -> list[Action]:
        ref, leg, day, until = self._journey()
        ranked = sorted(self.good, key=_frame_rank, reverse=True)[:self.rules.enrol_frames]
        vectors = [f.template for f in ranked if f.template is not None]
        if ref.template is not None:
            vectors.append(ref.template)
        self.state = State.PUBLISHING
        scopes = (flight_scope(leg.carrier, leg.flight_number, day), checkpoint_scope(self.rules.airport))
        extra = {"approved_by": approved_by, "approval_reason": reason} if approved_by else {}
        return [self._record("kiosk_enrol_sent", n_templates=len(vectors), scopes=list(scopes), **extra),
                Publish(subject_id=ref.subject_id, display_name=ref.display_name, scopes=scopes,
                        departure_airport=leg.from_airport, valid_until=until,
                        templates=np.stack(vectors).astype(np.float32))]

    # ----- events ----------------------------------------------------------------------------

    def on_pass(self, text: str, now: dt.datetime) -> list[Action]:
        if self.state is not State.AWAIT_PASS:
            return [Guide("A boarding pass is already scanned for this session")]
        try:
            bp = parse_bcbp(text)
        except BcbpError as exc:
            return [Audit({"event": "kiosk_pass_refused", "reason": str(exc)}),
                    Guide("This boarding pass cannot be read; please see the agent")]
        leg = next((g for g in bp.legs if g.from_airport == self.rules.airport), None)
        if leg is None:
            first = bp.legs[0]
            why = f"no leg of this pass departs from {self.rules.airport} ({first.from_airport}-{first.to_airport})"
            return [Audit({"event": "kiosk_pass_refused", "reason": why}),
                    Guide(f"This pass is not for a flight from {self.rules.airport}")]
        local_today = now.astimezone(self.rules.airport_tz).date()
        day = leg.flight_date(local_today)
        until = departure_validity_end(day, self.rules.airport_tz, self.rules.departure_grace)
        if until <= now or day > local_today + dt.timedelta(days=self.rules.max_days_ahead):
            why = (f"flight {leg.flight} on {day.isoformat()} has left (validity ended {until:%Y-%m-%d %H:%MZ})"
                   if until <= now else f"flight {leg.flight} on {day.isoformat()} is too far ahead to enrol")
            return [Audit({"event": "kiosk_pass_refused", "reason": why, "flight": leg.flight}),
                    Guide("Enrolment is open on the day of your flight; please see the agent")]
        self.boarding_pass, self.leg, self.flight_date, self.valid_until = bp, leg, day, until
        self.state = State.AWAIT_IDENTITY
        return [Guide("Please place your ID card on the reader")]

    def on_reference(self, ref: Reference, t: float) -> list[Action]:
        if self.state is not State.AWAIT_IDENTITY:
            return [Guide("Please scan your boarding pass first")]
        self.reference = ref
        self.state = State.CAPTURING
        self.capture_started = t
        self._last_guide = ""
        return [Guide("Please look at the camera")]

    def on_reference_refused(self, reason: str) -> list[Action]:
        """The document or hand-over failed its checks (kiosk.identity raised): never enrolled."""
        if self.state is not State.AWAIT_IDENTITY:
            return []
        return self._close("reference_refused", reason=reason) + [
            Guide("Your ID could not be verified; please see the agent")]

    def on_frame(self, frame: LiveFrame) -> list[Action]:
        if self.state is not State.CAPTURING:
            return []
        self.frames_seen += 1
        actions: list[Action] = []
        message = guidance(frame, self.rules)
        if message != self._last_guide:
            self._last_guide = message
            actions.append(Guide(message))
        usable = frame.faces == 1 and frame.quality_ok and frame.template is not None and \
            frame.figures.get("inter_eye_px", 0.0) >= self.rules.target_inter_eye_px
        if usable:
            self.good.append(frame)
        if len(self.good) >= self.rules.frames_needed:
            actions += self._decide()
        elif frame.t - self.capture_started > self.rules.capture_timeout_s:
            actions += self._refer("capture_timeout")
        return actions

    def _decide(self) -> list[Action]:
        rules, (ref, _, _, _) = self.rules, self._journey()
        pads = [f.pad_live for f in self.good if f.pad_live is not None]
        if len(pads) == len(self.good):
            self.pad_mean = float(np.mean(pads))
        if ref.template is not None:
            self.scores = [float(np.dot(f.template, ref.template)) for f in self.good if f.template is not None]
        if rules.pad_required and self.pad_mean is None:
            return self._refer("pad_unavailable")
        if self.pad_mean is not None and self.pad_mean < rules.pad_threshold:
            return self._refer("pad_doubt")
        if ref.template is None:
            return self._refer(f"reference_unusable: {ref.problem}")
        if self.boarding_pass is not None and not names_agree(self.boarding_pass.passenger_name, ref.display_name):
            return self._refer("name_mismatch")
        median = float(np.median(self.scores))
        if median >= rules.threshold_1to1:
            return self._publish()
        return self._refer("verify_ambiguous" if median >= rules.threshold_1to1 - rules.ambiguous_margin
                           else "verify_failed", self._verify_detail(median))

    def on_tick(self, t: float) -> list[Action]:
        if self.state is State.CAPTURING and t - self.capture_started > self.rules.capture_timeout_s:
            return self._refer("capture_timeout")
        return []

    def on_abandon(self, why: str) -> list[Action]:
        """The traveller walked away (or the station stops): close what is open, audited."""
        if self.state in (State.ENROLLED, State.CLOSED, State.PUBLISHING):
            return []
        if self.state is State.AWAIT_PASS:
            self.state = State.CLOSED
            return []
        return self._close("abandoned", reason=why)

    def on_agent(self, approve: bool, operator: str, reason: str) -> list[Action]:
        """The counter agent's decision on a referral; operator and reason are required."""
        if self.state is not State.REFERRED:
            raise ValueError(f"nothing to approve: the session is {self.state.value}")
        if not operator.strip() or not reason.strip():
            raise ValueError("an agent decision needs an operator id and a reason (both audited)")
        if not approve:
            return self._close("declined_by_agent", operator=operator, reason=reason, referral=self.referral)
        if not self.good:
            raise ValueError("no live frame of the traveller was captured: capture again before approving")
        actions = [self._record("kiosk_agent_approved", operator=operator, reason=reason, referral=self.referral)]
        return actions + self._publish(approved_by=operator, reason=reason)

    def on_published(self, ok: bool, detail: str, change_seq: int = 0) -> list[Action]:
        if self.state is not State.PUBLISHING:
            return []
        if ok:
            self.state = State.ENROLLED
            self.outcome = "enrolled"
            until = self._journey()[3]
            return [self._record("kiosk_attempt", outcome="enrolled", change_seq=change_seq,
                                 valid_until=until.isoformat(), referral=self.referral or None),
                    Guide("You are enrolled: go to security")]
        return self._close("publish_failed", reason=detail) + [Guide("Enrolment failed; please see the agent")]

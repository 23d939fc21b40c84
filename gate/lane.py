"""The lane state machine: `step(state, event) -> (state, actions)`, with no I/O and no clock.

Modes: IDLE → ACQUIRING → DECIDED → OPEN → IDLE for a passenger (a failed attempt that may be
retried stays in ACQUIRING with a prompt, see AttemptPolicy); ALARM (forced door, tamper, and
what the site's LatchPolicy latches: tailgating, deny-list hit, suspected presentation attack)
latched until a staff reset;
EMERGENCY (fire input: fail open, latched until a staff reset with the input off);
OUT_OF_SERVICE while a device or the audit log is faulty or staff took the lane out.

Safety shape:
- Every change of mode emits an `Audit` action before any device action of the same step, so
  the daemon (which stops openings when an audit write fails) never opens unrecorded.
- Only OPEN and EMERGENCY unlock; every other mode re-asserts `Lock` when entered.
- Latches (alarm, emergency, staff out-of-service) and faults live beside the mode, so when a
  passage or a staff action ends, the lane falls back to the most severe condition still in
  force rather than to IDLE.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Callable, Iterable, Mapping

from configschema import ConfigError
from gate.actions import Action, Alert, Audit, Buzzer, Colour, Direction, Indicate, Lock, RecordPassage, Unlock
from gate.decide import (
    Decision,
    DecisionPolicy,
    Outcome,
    Reason,
    Token,
    Unserved,
    decide,
    refer_unknown_token,
    why_undecided,
)
from gate.events import (
    AuditFailed,
    AuditRestored,
    DeviceFault,
    DeviceRestored,
    DoorForced,
    Event,
    FireAlarm,
    PassageComplete,
    StaffAction,
    StaffCommand,
    Tamper,
    Tick,
    TokenRead,
)
from gate.field_ranges import check_ranges
from gate.observation import FaceObservation, FrameObservation, ListType
from gate.track import Track, TrackPolicy, follow, in_capture_zone, iou, restart, same_visit, settle, tailgate_ratio

AUDIT_LOG = "audit_log"  # the fault name under which an unwritable audit log is tracked

TEXT_READY = "Look at the camera"
TEXT_HOLD_STILL = "Hold still"
TEXT_PASS = "Please pass"
TEXT_HELD_OPEN = "Gate open"
TEXT_NOT_RECOGNISED = "Not recognised"
TEXT_ALREADY_PASSED = "Already passed: see staff"
TEXT_SEE_STAFF = "Please see staff"
TEXT_WAIT = "Please wait"
TEXT_ALARM = "Stop: staff called"
TEXT_EMERGENCY = "Emergency: gate open"
TEXT_CLOSED = "Lane closed"


class Mode(StrEnum):
    IDLE = "idle"
    ACQUIRING = "acquiring"
    DECIDED = "decided"
    OPEN = "open"
    ALARM = "alarm"
    EMERGENCY = "emergency"
    OUT_OF_SERVICE = "out_of_service"


# Modes of ordinary service: a fault or a staff out-of-service takes the lane out of them at once.
_IN_SERVICE = frozenset({Mode.IDLE, Mode.ACQUIRING, Mode.DECIDED, Mode.OPEN})
# Decision reasons a passenger may try again after, within the same visit (see AttemptPolicy).
_RETRYABLE = (Reason.NO_MATCH, Reason.PRESENTATION_ATTACK, Reason.LOW_QUALITY, Reason.AMBIGUOUS_MARGIN)


@dataclass(frozen=True, kw_only=True)
class AttemptPolicy:
    """Retry before referral. Commercial e-gates prompt and retry before calling staff: the
    shipped PAD refuses ~8% of genuine single photos (BPCER 8.2%), and a first bad frame is the
    commonest cause of a no-match, so a second attempt on fresh frames serves most of those
    travellers at the cost of a few seconds. The price: an attacker also gets `max` tries per
    visit (APCER 16.9% per try at the reference operating point, ~31% over two).

    A look-alike referral (ambiguous_margin: the best identity at or above threshold_1n, but
    another enrolled identity within min_margin) is retried too. The new look must pass the
    same rule on fresh frames, threshold and margin, and the visit has no more attempts than
    after a no-match, so a stranger is never given more than `max` tries of the full rule;
    what changes is that a stranger who came close on the first look also gets the second one,
    which a stranger who scored lower already had. Measured on LFW (`python -m
    tools.lookalike_study` on `gate-eval ident --save-templates` dlib templates, 400 galleries
    of 30, threshold 0.9292 = 1:1 FAR 1e-3, margin 0.03, two looks per visit): strangers opened
    2.09 % of visits before and 2.17 % with this retry (a stranger referred as a look-alike
    opens on the second look 6 % of the time, against 0.9 % after a no-match); genuine
    travellers let through rose from 91.4 % to 96.2 %, and one in ~12,000 was let through as
    another enrolled traveller (none before). Counting the margin only against rivals at or
    above the threshold would let genuine travellers through as often (96.6 %) but doubles the
    strangers opened (4.18 %, near the 4.31 % of no margin rule at all): not done. The prompt
    is the no-match's, so a stranger learns nothing about which check failed."""

    max: int = field(default=2, metadata={
        "help": "attempts a passenger gets within one visit before a refusal or referral is final; "
                "each retry shows a prompt (look at the camera / step closer / remove glasses) and "
                "starts the evidence afresh", "min": 1, "max": 5})
    retry_on: tuple[str, ...] = field(default=tuple(r.value for r in _RETRYABLE), metadata={
        "help": "decision reasons that give another attempt (any of: "
                + ", ".join(r.value for r in _RETRYABLE) + ")"})
    settle_s: float = field(default=1.5, metadata={
        "help": "seconds after a prompt before frames count as evidence again: the passenger reads it and "
                "responds (about a second: reading a three-word prompt, then turning or stepping), and a "
                "retry judged on the frames before the response only repeats the failure", "min": 0.0, "max": 5.0})
    quality_prompt_frames: int = field(default=8, metadata={
        "help": "consecutive quality-failing frames (about half a second at 15 fps) after which the passenger "
                "is shown what to fix (look at the camera / step closer / hold still) without losing an "
                "attempt; once per attempt; 0 = only the retry prompt after lane.policy.low_quality_refer_frames",
        "min": 0})

    def __post_init__(self) -> None:
        check_ranges(self)
        bad = sorted(set(self.retry_on) - {r.value for r in _RETRYABLE})
        if bad:
            raise ConfigError(f"retry_on: {', '.join(bad)} cannot be retried; choose from "
                             + ", ".join(r.value for r in _RETRYABLE))


@dataclass(frozen=True, kw_only=True)
class LatchPolicy:
    """What holds the lane locked in ALARM until staff reset it, per site.

    Tailgating and a deny-list hit latch by default: someone is at the gate who must not pass,
    and only a person on the spot can resolve it. A suspected presentation attack (after its
    retries) refers without latching by default: most such verdicts are genuine travellers
    (BPCER 8.2%: one in twelve), and a latch would block the traveller behind them too, which
    at a busy lane means a staff call every dozen passengers. A site that fears repeated
    attacks more than queues sets `presentation_attack = true`."""

    tailgating: bool = field(default=True, metadata={
        "help": "a second person at the gate (tailgating) latches the lane until a staff reset"})
    deny_list: bool = field(default=True, metadata={
        "help": "a deny-list hit latches the lane (quietly: no siren) until a staff reset"})
    presentation_attack: bool = field(default=False, metadata={
        "help": "a suspected presentation attack (after the allowed attempts) latches the lane; "
                "false: the passenger is referred to staff and the next traveller is served"})

    def latches(self, reason: Reason) -> bool:
        return {Reason.TAILGATING: self.tailgating, Reason.DENY_LIST: self.deny_list,
                Reason.PRESENTATION_ATTACK: self.presentation_attack}.get(reason, False)


@dataclass(frozen=True, kw_only=True)
class PassbackPolicy:
    """Anti-passback (see gate.passback): one passage per person, also across a restart."""

    window_s: float = field(default=300.0, metadata={
        "help": "seconds after passing during which the same subject cannot open this lane again "
                "(a traveller lingering in view, a pass handed back); 0 = off", "min": 0.0})
    per_flight_h: float = field(default=20.0, metadata={
        "help": "on a boarding gate (a lane following a flight: scope), hours during which a subject who "
                "boarded cannot pass for the same flight again at all; under a day, so a daily flight's "
                "next departure boards again; 0 = off", "min": 0.0, "max": 72.0})

    def __post_init__(self) -> None:
        check_ranges(self)


# Prompts for a retry, by what went wrong (at most devices.base.MAX_TEXT_LEN characters).
TEXT_STEP_CLOSER = "Please step closer"
_PROMPTS = {Reason.NO_MATCH.value: "Look straight at the camera", Reason.AMBIGUOUS_MARGIN.value:
            "Look straight at the camera", Reason.PRESENTATION_ATTACK.value:
            "Remove glasses, look at camera", "face_too_small": TEXT_STEP_CLOSER,
            "blurred": "Hold still, look at camera"}
TEXT_LOOK = "Look at the camera"
# Alarms held without the siren. A deny-list subject should not learn that staff are coming;
# a PAD alarm is most often a genuine traveller (BPCER 8.2%: one in twelve), who deserves a
# "please wait" rather than a siren, and an attacker is told nothing about which check tripped.
_QUIET_ALARMS = frozenset({Reason.DENY_LIST.value, Reason.PRESENTATION_ATTACK.value})


@dataclass(frozen=True, kw_only=True)
class LaneConfig:
    lane_id: str = field(metadata={"help": "name of this lane in audit records and alerts"})
    policy: DecisionPolicy
    tracking: TrackPolicy = field(default_factory=TrackPolicy)
    passage_direction: str = field(default="entry", metadata={
        "help": "direction a passenger's automatic opening unlocks", "choices": ("entry", "exit")})
    open_timeout_s: float = field(default=10.0, metadata={
        "help": "seconds an opening waits for the passage sensor before locking again", "min": 0.0})
    result_display_s: float = field(default=3.0, metadata={
        "help": "seconds a refusal or referral stays on the display before the next attempt", "min": 0.0})
    token_ttl_s: float = field(default=30.0, metadata={
        "help": "seconds a read boarding pass / ID keeps the lane in 1:1 mode for its holder", "min": 0.0})
    attempts: AttemptPolicy = field(default_factory=AttemptPolicy, metadata={
        "help": "retry before referral"})
    latch: LatchPolicy = field(default_factory=LatchPolicy, metadata={
        "help": "what latches the lane until staff act"})
    passback: PassbackPolicy = field(default_factory=PassbackPolicy, metadata={"help": "anti-passback"})

    def __post_init__(self) -> None:
        check_ranges(self)
        Direction(self.passage_direction)
        if not self.lane_id:
            raise ValueError("lane_id must name the lane")


@dataclass(frozen=True)
class Opening:
    """Why the lane is OPEN: an accepted passenger or a staff command."""

    direction: Direction
    hold: bool  # staff UNLOCK: open until LOCK, passages do not close it
    deadline: float | None
    subject_id: str | None = None
    operator_id: str | None = None
    reason: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {"direction": self.direction.value, "hold": self.hold, "subject_id": self.subject_id,
                "operator_id": self.operator_id, "reason": self.reason}


@dataclass(frozen=True)
class LaneState:
    config: LaneConfig
    mode: Mode
    now: float  # time of the latest event
    since: float  # when the current mode was entered
    pad_provisioned: bool  # a PAD model runs on this lane's frames (a fact of start-up, not a setting)
    track: Track | None = None  # while ACQUIRING
    next_track_id: int = 1
    token: Token | None = None
    decision: Decision | None = None  # the latest decision, while DECIDED / OPEN / ALARM from it
    opening: Opening | None = None  # while OPEN
    alarm: str | None = None  # latched alarm cause until a staff reset
    fire_active: bool = False  # the fire-alarm input's current level
    faults: frozenset[str] = frozenset()  # devices (and AUDIT_LOG) currently failing
    out_of_service_by: str | None = None  # operator who took the lane out of service
    served: Track | None = None  # the person last decided, while still in view: one decision per visit
    served_subject: str | None = None  # who that decision named (None: nobody matched)
    attempt: int = 1  # the current attempt of the person in front of the camera (see AttemptPolicy)
    flights: frozenset[str] = frozenset()  # the flight: scopes this lane boards (a fact of start-up)
    passed: Mapping[str, float] = field(default_factory=dict)  # subject -> time of their last passage here
    boarded: Mapping[str, float] = field(default_factory=dict)  # subject -> time they boarded one of `flights`
    # a face standing outside the capture zone while the lane is free (see TrackPolicy.step_closer_after_s)
    outside_since: float | None = None
    outside_box: tuple[float, float, float, float] | None = None
    outside_prompted: bool = False
    second_face_frames: int = 0  # consecutive frames with a close second face (DecisionPolicy.tailgate_frames)

    @property
    def one_to_one_subject(self) -> str | None:
        """The subject the daemon must `Matcher.verify` the primary face against (1:1 mode)."""
        return None if self.token is None else self.token.subject_id

    @property
    def uses_frames(self) -> bool:
        """Whether frames matter now (faces to acquire, tailgaters to watch for, or whether the
        person just decided is still there while the result is shown)."""
        return self.mode in (Mode.IDLE, Mode.ACQUIRING, Mode.DECIDED, Mode.OPEN)

    @property
    def uses_matching(self) -> bool:
        """Whether the primary face needs embedding and matching (otherwise boxes suffice)."""
        return self.mode in (Mode.IDLE, Mode.ACQUIRING)


Result = tuple[LaneState, list[Action]]


# The mode says which optional part of the state is set (ACQUIRING: a track; DECIDED: a
# decision; OPEN: an opening). These read that part where the mode guarantees it, so a broken
# invariant stops at the line that assumed it.
def _track(s: LaneState) -> Track:
    assert s.track is not None, f"{s.mode} without a track"
    return s.track


def _decision(s: LaneState) -> Decision:
    assert s.decision is not None, f"{s.mode} without a decision"
    return s.decision


def _opening(s: LaneState) -> Opening:
    assert s.opening is not None, f"{s.mode} without an opening"
    return s.opening


def start(config: LaneConfig, t: float, *, pad_provisioned: bool, flights: Iterable[str] = (),
          passed: Iterable[Any] = ()) -> tuple[LaneState, tuple[Action, ...]]:
    """The lane at daemon start-up: locked, idle, and the start recorded.

    `pad_provisioned` is whether the daemon loaded a PAD model. It is an argument, not a
    LaneConfig key, because it states what is running rather than what the operator wants
    (that is `models.pad_required`); a config key could claim PAD that is not there. It has no
    default so a caller cannot forget it: with it False every decision records "pad":
    "not provisioned", with it True no frame counts as evidence until PAD has scored it.
    `flights` are the flight: scopes the lane boards and `passed` the remembered passages
    (`gate.passback.PastPassage`: subject_id, age_s, boarded) from before this start.
    """
    state = LaneState(config=config, mode=Mode.IDLE, now=t, since=t, pad_provisioned=pad_provisioned,
                      flights=frozenset(flights), passed={p.subject_id: t - p.age_s for p in passed},
                      boarded={p.subject_id: t - p.age_s for p in passed if p.boarded})
    record = {"event": "lane_started", "lane": config.lane_id, "t": round(t, 6), "from": None,
              "to": Mode.IDLE.value, "pad_provisioned": pad_provisioned}
    return state, (Audit(record), *_entry_actions(state))


def step(state: LaneState, event: Event) -> tuple[LaneState, tuple[Action, ...]]:
    """Bring the lane to `event.t` (firing whatever timeouts are due), then handle the event.

    Timeouts are checked on every event, not only on `Tick`, so a late tick cannot keep a
    gate open past its deadline when other events are flowing.
    """
    handler = _HANDLERS.get(type(event))
    if handler is None:
        raise TypeError(f"the lane has no handler for {type(event).__name__}")
    s = replace(state, now=max(state.now, float(event.t)))  # time never runs backwards
    s, actions = _advance_time(s)
    s, more = handler(s, event)
    return s, tuple(actions + more)


# ---- building blocks --------------------------------------------------------------------------

def _record(s: LaneState, to: Mode, event: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"event": event, "lane": s.config.lane_id, "t": round(s.now, 6), "from": s.mode.value,
            "to": to.value, **fields}


def _note(s: LaneState, event: str, **fields: Any) -> list[Action]:
    """An audit record for something that happened without changing the mode."""
    return [Audit(_record(s, s.mode, event, fields))]


def _go(s: LaneState, to: Mode, event: str, fields: dict[str, Any] | None = None, **changes: Any) -> Result:
    record = _record(s, to, event, fields or {})
    new = replace(s, mode=to, since=s.now, **changes)
    return new, [Audit(record), *_entry_actions(new)]


def _rest_mode(s: LaneState) -> Mode:
    if s.alarm is not None:
        return Mode.ALARM
    if s.faults or s.out_of_service_by is not None:
        return Mode.OUT_OF_SERVICE
    return Mode.IDLE


def _settle(s: LaneState, event: str, fields: dict[str, Any] | None = None, **changes: Any) -> Result:
    """End the current episode and fall back to the most severe condition still in force. After
    an alarm or an outage (frames were not watched) the person just served gets `visit_gap_s`
    from now to be seen again before the visit counts as over; after a result shown or a passage
    the lane watched them, so whether they are still there is known."""
    watched = s.mode in (Mode.DECIDED, Mode.OPEN)
    s = replace(s, **changes)
    if s.served is not None and not watched:
        s = replace(s, served=replace(s.served, last_seen_t=s.now))
    return _go(s, _rest_mode(s), event, fields, track=None, opening=None, decision=None)


def _entry_actions(s: LaneState) -> list[Action]:
    if s.mode is Mode.OPEN:
        opening = _opening(s)
        text = TEXT_HELD_OPEN if opening.hold else TEXT_PASS
        return [Unlock(opening.direction, hold=opening.hold), Indicate(Colour.GREEN, Buzzer.SHORT, text)]
    if s.mode is Mode.EMERGENCY:
        return [Unlock(Direction.BOTH, hold=True, fail_safe=True),
                Indicate(Colour.GREEN, Buzzer.NONE, TEXT_EMERGENCY)]
    if s.mode is Mode.IDLE:
        indication = Indicate(Colour.OFF, Buzzer.NONE, TEXT_READY)
    elif s.mode is Mode.ACQUIRING:
        indication = Indicate(Colour.OFF, Buzzer.NONE, TEXT_HOLD_STILL)
    elif s.mode is Mode.DECIDED:
        decision = _decision(s)
        if decision.outcome is Outcome.ALLOW or s.config.latch.latches(decision.reason):
            return []  # OPEN or ALARM follows within the same step and sets the barrier
        if decision.reason is Reason.ANTI_PASSBACK:
            indication = Indicate(Colour.RED, Buzzer.LONG, TEXT_ALREADY_PASSED)
        elif decision.outcome is Outcome.DENY:
            indication = Indicate(Colour.RED, Buzzer.LONG, TEXT_NOT_RECOGNISED)
        else:
            indication = Indicate(Colour.AMBER, Buzzer.LONG, TEXT_SEE_STAFF)
    elif s.mode is Mode.ALARM:
        indication = (Indicate(Colour.RED, Buzzer.NONE, TEXT_WAIT) if s.alarm in _QUIET_ALARMS
                      else Indicate(Colour.RED, Buzzer.ALARM, TEXT_ALARM))
    else:
        indication = Indicate(Colour.RED, Buzzer.NONE, TEXT_CLOSED)
    return [Lock(), indication]


def _alert(s: LaneState, kind: str, **details: Any) -> Alert:
    return Alert(kind, {"lane": s.config.lane_id, "t": round(s.now, 6), **details})


def _raise_alarm(s: LaneState, cause: str, **details: Any) -> Result:
    alert = _alert(s, cause, **details)
    if s.mode in (Mode.EMERGENCY, Mode.ALARM):  # already open by law / already latched
        return s, _note(s, cause, **details) + [alert]
    s, actions = _go(s, Mode.ALARM, cause, details, alarm=cause, track=None, opening=None, token=None)
    return s, actions + [alert]


def _apply_decision(s: LaneState, d: Decision, timings_ms: dict[str, float] | None = None) -> Result:
    fields: dict[str, Any] = {"decision": d.to_record()}
    if timings_ms:
        fields["timings_ms"] = {k: round(float(v), 2) for k, v in timings_ms.items()}
    s, actions = _go(s, Mode.DECIDED, "decision", fields, decision=d, track=None, token=None, served=s.track,
                     served_subject=d.subject_id)
    if d.outcome is Outcome.ALLOW:
        cfg = s.config
        opening = Opening(Direction(cfg.passage_direction), hold=False, deadline=s.now + cfg.open_timeout_s,
                          subject_id=d.subject_id)
        s, more = _go(s, Mode.OPEN, "open", {"opening": opening.to_record()}, opening=opening)
        return s, actions + more
    if s.config.latch.latches(d.reason):
        s, more = _raise_alarm(s, d.reason.value, subject_id=d.subject_id,
                               score=None if d.score is None else round(d.score, 4), details=dict(d.details),
                               pad=d.pad_record())
        return s, actions + more
    if d.outcome is Outcome.REFER:
        actions.append(_alert(s, "refer", reason=d.reason.value, subject_id=d.subject_id))
    elif d.reason is Reason.ANTI_PASSBACK:
        actions.append(_alert(s, "anti_passback", subject_id=d.subject_id, **dict(d.details)))
    return s, actions


def _why_unserved(s: LaneState) -> dict[str, Any]:
    return why_undecided(_track(s), s.now, s.config.policy, s.token, pad_provisioned=s.pad_provisioned)


def _prompt(d: Decision) -> str:
    if d.reason is Reason.LOW_QUALITY:
        reasons = d.details.get("quality_reasons") or ()
        return next((_PROMPTS[r] for r in reasons if r in _PROMPTS), TEXT_LOOK)
    return _PROMPTS.get(d.reason.value, TEXT_LOOK)


def _retry(s: LaneState, d: Decision) -> Result:
    """Not final yet: record the failed attempt and its reason, prompt the passenger and start
    the evidence afresh on the same track (the same person, still in front of the camera)."""
    prompt = _prompt(d)
    record = _record(s, s.mode, "attempt_failed", {
        "track_id": d.track_id, "attempt": s.attempt, "of": s.config.attempts.max, "prompt": prompt,
        "decision": d.to_record()})
    s = replace(s, attempt=s.attempt + 1, track=restart(_track(s), s.now, s.config.attempts.settle_s))
    return s, [Audit(record), Indicate(Colour.AMBER, Buzzer.SHORT, prompt)]


def _guide(s: LaneState) -> Result:
    """Show a passenger whose face keeps failing quality what to fix, early and without
    costing an attempt (commercial e-gates guide continuously): a head turned up or aside for
    the whole first attempt cost that attempt and 2 s (30 frames) before any prompt appeared.
    The attempt goes on; its frames count again once the passenger has had time to respond."""
    track = _track(s)
    reasons = track.last_quality_reasons
    prompt = next((_PROMPTS[r] for r in reasons if r in _PROMPTS), TEXT_LOOK)
    a = s.config.attempts
    s = replace(s, track=settle(track, s.now, a.settle_s))
    return s, _note(s, "prompt", track_id=track.track_id, attempt=s.attempt, why=Reason.LOW_QUALITY.value,
                    quality_reasons=list(reasons), prompt=prompt) + [Indicate(Colour.AMBER, Buzzer.SHORT, prompt)]


def _outside_zone(s: LaneState, face: FaceObservation | None) -> Result:
    """A face that stays outside the capture zone while the lane is free is someone who stopped
    short of the mark: without a word from the lane they wait until they give up (3 of 4 who
    stopped short in the lane benchmark did). After `step_closer_after_s` with the same face the
    display asks them to step closer, once, and the audit records it."""
    t = s.config.tracking
    if face is None or not t.step_closer_after_s:
        if s.outside_box is None:
            return s, []
        return replace(s, outside_since=None, outside_box=None, outside_prompted=False), []
    if s.outside_box is None or s.outside_since is None or iou(s.outside_box, face.box) < t.iou_min:
        return replace(s, outside_since=s.now, outside_box=face.box, outside_prompted=False), []
    since = s.outside_since
    s = replace(s, outside_box=face.box)
    if s.outside_prompted or s.now - since < t.step_closer_after_s:
        return s, []
    s = replace(s, outside_prompted=True)
    return s, _note(s, "prompt", why=Unserved.OUTSIDE_CAPTURE_ZONE.value, face_px=round(face.size, 1),
                    capture_min_face_px=t.capture_min_face_px, waited_s=round(s.now - since, 3),
                    prompt=TEXT_STEP_CLOSER) + [Indicate(Colour.AMBER, Buzzer.SHORT, TEXT_STEP_CLOSER)]


def _passed_already(s: LaneState, d: Decision) -> Decision:
    """An acceptance of someone who passed here within the window, or boarded this lane's
    flight, becomes a refusal that says so (the match itself is kept in the record)."""
    p = s.config.passback
    sid = d.subject_id
    if sid is None:
        return d
    details: dict[str, Any] = {}
    if sid in s.boarded and s.flights and p.per_flight_h and s.now - s.boarded[sid] < p.per_flight_h * 3600:
        details = {"boarded": sorted(s.flights), "passed_s_ago": round(s.now - s.boarded[sid], 1)}
    elif sid in s.passed and p.window_s and s.now - s.passed[sid] < p.window_s:
        details = {"passed_s_ago": round(s.now - s.passed[sid], 1), "window_s": p.window_s}
    if not details:
        return d
    return replace(d, outcome=Outcome.DENY, reason=Reason.ANTI_PASSBACK, details={**d.details, **details})


def _remember_passage(s: LaneState, subject_id: str) -> LaneState:
    p = s.config.passback
    keep_s = max(p.window_s, p.per_flight_h * 3600 if s.flights else 0.0)
    passed = {k: v for k, v in s.passed.items() if s.now - v < keep_s}
    passed[subject_id] = s.now
    boarded = s.boarded
    if s.flights:
        boarded = {k: v for k, v in s.boarded.items() if s.now - v < p.per_flight_h * 3600}
        boarded[subject_id] = s.now
    return replace(s, passed=passed, boarded=boarded)


def _judge(s: LaneState, ratio: float | None, timings_ms: dict[str, float] | None) -> Result:
    d = decide(_track(s), s.now, s.config.policy, s.token, ratio, pad_provisioned=s.pad_provisioned)
    if d is None:
        track, a = _track(s), s.config.attempts
        if a.quality_prompt_frames and not track.guided and track.low_quality_streak >= a.quality_prompt_frames:
            return _guide(s)
        return s, []
    if d.outcome is Outcome.ALLOW:
        d = _passed_already(s, d)
    a = s.config.attempts
    if d.outcome is not Outcome.ALLOW and d.reason.value in a.retry_on and s.attempt < a.max:
        return _retry(s, d)
    return _apply_decision(s, d, timings_ms)


def _advance_time(s: LaneState) -> Result:
    """Everything that is due by `s.now`, whatever the event that brought the time."""
    actions: list[Action] = []
    if s.token is not None and s.now - s.token.read_at >= s.config.token_ttl_s:
        actions += _note(s, "token_expired", subject_id=s.token.subject_id, token_kind=s.token.kind)
        s = replace(s, token=None, track=None if s.track is None else restart(s.track, s.now))
    if s.mode is Mode.ACQUIRING and s.now - _track(s).last_seen_t >= s.config.tracking.lost_after_s:
        s, more = _go(s, Mode.IDLE, "face_lost", {"track_id": _track(s).track_id, "unserved": _why_unserved(s)},
                      track=None)
        actions += more
    elif s.mode is Mode.DECIDED and s.now - s.since >= s.config.result_display_s:
        s, more = _settle(s, "result_shown")
        actions += more
    elif s.mode is Mode.OPEN and (deadline := _opening(s).deadline) is not None and s.now >= deadline:
        s, more = _settle(s, "open_timeout", {"opening": _opening(s).to_record()})
        actions += more
    return s, actions


# ---- event handlers ---------------------------------------------------------------------------

def _still_served(s: LaneState, served: Track, face: FaceObservation) -> bool:
    """Whether `face` is `served`, the person just decided: the same place in the picture, and
    not clearly someone else (a face matching another enrolled identity is a new passenger who
    stepped up into the same spot, and starts a normal attempt)."""
    if not same_visit(served, face, s.config.tracking):
        return False
    best = next((c for c in face.matches or () if c.list_type is ListType.ALLOW), None)
    return best is None or best.score < s.config.policy.threshold_1n or best.subject_id == s.served_subject


def _persistent_tailgate_ratio(s: LaneState, frame: FrameObservation) -> tuple[LaneState, float | None]:
    """The frame's second-face ratio once a close second face has been in `tailgate_frames`
    consecutive frames (None before): a stray detection must not latch the lane. While the
    streak is shorter, the lane decides nothing on those frames, so two people together are
    not let through before their second frame together has come."""
    ratio = tailgate_ratio(frame)
    close = ratio is not None and ratio >= s.config.policy.tailgate_size_ratio
    streak = s.second_face_frames + 1 if close else 0
    if streak != s.second_face_frames:
        s = replace(s, second_face_frames=streak)
    return s, ratio if streak >= s.config.policy.tailgate_frames else None


def _on_frame(s: LaneState, frame: FrameObservation) -> Result:
    tracking = s.config.tracking
    s, persistent_ratio = _persistent_tailgate_ratio(s, frame)
    if s.mode in (Mode.DECIDED, Mode.OPEN) and s.served is not None and frame.primary is not None \
            and same_visit(s.served, frame.primary, tracking):
        # the person just decided is still in view: when they leave is what ends their visit. A
        # refused traveller who left while "not recognised" was shown is not mistaken for the
        # next one stepping onto the same spot (whose frames had no match to tell them apart)
        s = replace(s, served=replace(s.served, box=frame.primary.box, last_seen_t=s.now))
    if s.mode is Mode.OPEN:
        opening = _opening(s)
        if not opening.hold and persistent_ratio is not None:
            return _raise_alarm(s, Reason.TAILGATING.value, tailgate_ratio=round(persistent_ratio, 3),
                                opening=opening.to_record())
        return s, []
    if s.mode not in (Mode.IDLE, Mode.ACQUIRING):
        return s, []
    face = frame.primary
    if s.mode is Mode.IDLE and s.served is not None:
        served = s.served
        if s.now - served.last_seen_t >= tracking.visit_gap_s or (
                face is not None and not _still_served(s, served, face)):
            s = replace(s, served=None)  # the decided person has left, or someone else stepped up
        elif face is not None:  # the decided person, still there: not judged again
            return replace(s, served=replace(served, box=face.box, last_seen_t=s.now)), []
        else:
            return s, []
    if face is None or not in_capture_zone(face, tracking):
        if s.mode is Mode.ACQUIRING and face is not None:  # stepped back: say so if the attempt ends
            track = _track(s)
            s = replace(s, track=replace(track, out_of_zone_streak=track.out_of_zone_streak + 1))
        if s.mode is Mode.IDLE:
            return _outside_zone(s, face)
        return s, []
    if s.outside_box is not None:
        s = replace(s, outside_since=None, outside_box=None, outside_prompted=False)
    window_s = s.config.policy.window_s
    track = follow(s.track, face, s.now, s.next_track_id, tracking, window_s)
    actions: list[Action] = []
    if s.track is None or track.track_id != s.track.track_id:
        event = "face_acquired" if s.mode is Mode.IDLE else "track_replaced"
        fields: dict[str, Any] = {"track_id": track.track_id}
        if s.track is not None:
            fields["previous_track_id"] = s.track.track_id
            fields["previous_unserved"] = _why_unserved(s)
        s, actions = _go(s, Mode.ACQUIRING, event, fields, track=track, next_track_id=s.next_track_id + 1,
                         attempt=1)
    else:
        s = replace(s, track=track)
    if persistent_ratio is None and s.second_face_frames:  # a stray, or a companion: not decided yet
        return s, actions
    s, more = _judge(s, persistent_ratio, dict(frame.timings_ms))
    return s, actions + more


def _on_tick(s: LaneState, _: Tick) -> Result:
    if s.mode is not Mode.ACQUIRING or s.second_face_frames:  # see _persistent_tailgate_ratio
        return s, []
    return _judge(s, None, None)


def _on_passage(s: LaneState, e: PassageComplete) -> Result:
    direction = None if e.direction is None else e.direction.value
    if s.mode is Mode.OPEN and not _opening(s).hold:
        subject_id = _opening(s).subject_id  # a face still in view after the passage is theirs: not judged again
        s, actions = _settle(s, "passage_complete", {"opening": _opening(s).to_record(), "direction": direction})
        if subject_id is None:
            return s, actions
        return _remember_passage(s, subject_id), actions + [RecordPassage(subject_id)]
    if s.mode in (Mode.OPEN, Mode.EMERGENCY):
        return s, _note(s, "passage", direction=direction)
    return s, _note(s, "unexpected_passage", direction=direction) + [
        _alert(s, "unexpected_passage", direction=direction)]


def _on_forced(s: LaneState, e: DoorForced) -> Result:
    return _raise_alarm(s, "door_forced", detail=e.detail)


def _on_tamper(s: LaneState, e: Tamper) -> Result:
    return _raise_alarm(s, "tamper", detail=e.detail)


def _on_fire(s: LaneState, e: FireAlarm) -> Result:
    if e.active == s.fire_active:  # a repeated level is not news
        return s, []
    if not e.active:  # the latch holds: only a staff reset leaves EMERGENCY
        return replace(s, fire_active=False), _note(s, "fire_alarm_off")
    s, actions = _go(s, Mode.EMERGENCY, "fire_alarm_on", None, fire_active=True, track=None, opening=None,
                     decision=None, token=None)
    return s, actions + [_alert(s, "emergency", cause="fire_alarm")]


def _fault(s: LaneState, device: str, detail: str) -> Result:
    if device in s.faults:
        return s, []
    kind = "audit_failure" if device == AUDIT_LOG else "device_fault"
    s = replace(s, faults=s.faults | {device})
    if s.mode in _IN_SERVICE:
        s, actions = _go(s, Mode.OUT_OF_SERVICE, kind, {"device": device, "detail": detail},
                         track=None, opening=None, decision=None, token=None)
    else:
        actions = _note(s, kind, device=device, detail=detail)
    return s, actions + [_alert(s, kind, device=device, detail=detail)]


def _restored(s: LaneState, device: str) -> Result:
    """A driver locks the barrier when its link comes back, so the current mode's barrier and
    display state is applied again (e.g. the emergency release)."""
    if device not in s.faults:
        return s, []
    s = replace(s, faults=s.faults - {device})
    if s.mode is Mode.OUT_OF_SERVICE and _rest_mode(s) is not Mode.OUT_OF_SERVICE:
        return _settle(s, "device_restored", {"device": device})
    return s, _note(s, "device_restored", device=device, faults=sorted(s.faults)) + _entry_actions(s)


def _on_device_fault(s: LaneState, e: DeviceFault) -> Result:
    return _fault(s, e.device, e.detail)


def _on_device_restored(s: LaneState, e: DeviceRestored) -> Result:
    return _restored(s, e.device)


def _on_audit_failed(s: LaneState, e: AuditFailed) -> Result:
    return _fault(s, AUDIT_LOG, e.detail)


def _on_audit_restored(s: LaneState, _: AuditRestored) -> Result:
    return _restored(s, AUDIT_LOG)


def _on_token(s: LaneState, e: TokenRead) -> Result:
    fields = {"token_kind": e.kind, "subject_id": e.subject_id}
    if s.mode in (Mode.ALARM, Mode.OUT_OF_SERVICE, Mode.EMERGENCY):
        return s, _note(s, "token_ignored", **fields)
    if e.subject_id is None:
        if s.mode is Mode.OPEN:  # the next passenger, while the previous one walks through
            return s, _note(s, "token_unknown", **fields) + [_alert(s, "refer", reason=Reason.TOKEN_UNKNOWN.value)]
        return _apply_decision(s, refer_unknown_token(e.kind, None, s.now, pad_provisioned=s.pad_provisioned))
    assert e.list_type is not None  # a TokenRead names both or neither
    token = Token(e.subject_id, e.list_type, e.kind, s.now)
    track = None if s.track is None else restart(s.track, s.now)
    return replace(s, token=token, track=track), _note(s, "token_read", **fields)


def _on_staff(s: LaneState, c: StaffCommand) -> Result:
    fields: dict[str, Any] = {"action": c.action.value, "operator_id": c.operator_id, "reason": c.reason}

    def refuse(why: str) -> Result:
        return s, _note(s, "manual_action", **fields, refused=why) + [
            _alert(s, "manual_action_refused", **fields, refused=why)]

    if c.action in (StaffAction.OPEN_ONCE, StaffAction.UNLOCK):
        if s.mode is Mode.EMERGENCY:
            return refuse("emergency: the gate is already open")
        if AUDIT_LOG in s.faults:
            return refuse("audit log unavailable: no opening without its record")
        hold = c.action is StaffAction.UNLOCK
        opening = Opening(c.direction or Direction(s.config.passage_direction), hold=hold,
                          deadline=None if hold else s.now + s.config.open_timeout_s,
                          operator_id=c.operator_id, reason=c.reason)
        return _go(s, Mode.OPEN, "manual_action", {**fields, "opening": opening.to_record()}, opening=opening,
                   track=None, decision=None, token=None)
    if c.action is StaffAction.LOCK:
        if s.mode is Mode.EMERGENCY:
            return refuse("emergency: the gate stays open until a reset")
        if s.mode is Mode.OPEN:
            return _settle(s, "manual_action", fields)
        return s, _note(s, "manual_action", **fields) + [Lock()]
    if c.action is StaffAction.OUT_OF_SERVICE:
        s = replace(s, out_of_service_by=c.operator_id)
        if s.mode in _IN_SERVICE:
            return _go(s, Mode.OUT_OF_SERVICE, "manual_action", fields, track=None, opening=None, decision=None,
                       token=None)
        return s, _note(s, "manual_action", **fields)
    if c.action is StaffAction.IN_SERVICE:
        s = replace(s, out_of_service_by=None)
        if s.mode is Mode.OUT_OF_SERVICE and _rest_mode(s) is not Mode.OUT_OF_SERVICE:
            return _settle(s, "manual_action", fields)
        return s, _note(s, "manual_action", **fields, faults=sorted(s.faults))
    if c.action is StaffAction.RESET:
        if s.mode is Mode.EMERGENCY and s.fire_active:
            return refuse("the fire-alarm input is still active")
        fields["cleared"] = [x for x in (s.alarm, "emergency" if s.mode is Mode.EMERGENCY else None) if x]
        if s.mode in (Mode.EMERGENCY, Mode.ALARM):
            return _settle(s, "manual_action", fields, alarm=None)
        return replace(s, alarm=None), _note(s, "manual_action", **fields)
    raise ValueError(f"the lane has no rule for staff action {c.action.value!r}")


_HANDLERS: dict[type, Callable[[LaneState, Any], Result]] = {
    FrameObservation: _on_frame, Tick: _on_tick, PassageComplete: _on_passage, DoorForced: _on_forced,
    Tamper: _on_tamper, FireAlarm: _on_fire, DeviceFault: _on_device_fault, DeviceRestored: _on_device_restored,
    AuditFailed: _on_audit_failed, AuditRestored: _on_audit_restored, TokenRead: _on_token, StaffCommand: _on_staff,
}


def health_fields(s: LaneState, wall_now: float) -> dict[str, Any]:
    """What the central's fleet view needs to know of the lane's state, for the health report:
    which lane, the latched alarm, who took it out of service, and since when the current mode
    holds (as Unix time: lane time is monotonic, `wall_now` is the wall clock at `s.now`)."""
    return {"lane": s.config.lane_id, "alarm": s.alarm, "out_of_service_by": s.out_of_service_by,
            "mode_since": round(wall_now - (s.now - s.since), 3)}

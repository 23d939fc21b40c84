"""The central's answer to an enrolment station: who is asking, may they, then enrol.

Kept out of sync.central_server so the server's request loop gains one branch, and out of
sync.station_policy so the policy stays a pure function of its inputs.
"""
from __future__ import annotations

import datetime as dt
import logging

from sync.central import Central, Enrolment, EnrolmentError, Principal
from sync.scopes import scope_label
from sync.service_messages import EnrolRequest, Reply
from sync.station_policy import ExistingSubject, StationRefusal, check_enrolment

log = logging.getLogger(__name__)


def answer_enrolment(central: Central, principal: Principal | None, request: EnrolRequest,
                     now: dt.datetime | None = None) -> Reply:
    """Refusals are replies with the reason (and a log line); nothing is written for them."""
    rid = request.request_id
    if principal is None or principal.kind != "station" or principal.ident != request.station_id:
        log.warning("enrol: refused a request for station %s from %s", request.station_id,
                    principal.name if principal else "an unregistered peer")
        return Reply(request_id=rid, ok=False, error=f"not authorised as station {request.station_id}")
    now = now or dt.datetime.now(dt.timezone.utc)
    standing = central.subject_standing(request.subject_id)
    existing = None if standing is None else ExistingSubject(standing[0], standing[1])
    try:
        check_enrolment(principal.scopes[0], request, existing, now)
        result = central.enrol_subjects([Enrolment(
            subject_id=request.subject_id, list_type=request.list_type, scopes=request.scopes,
            valid_from=None if request.valid_from is None else dt.datetime.fromtimestamp(request.valid_from,
                                                                                          dt.timezone.utc),
            valid_until=dt.datetime.fromtimestamp(request.valid_until, dt.timezone.utc),
            model_id=request.model_id, vectors=request.templates, display_name=request.display_name)])[0]
    except (StationRefusal, EnrolmentError) as exc:
        log.warning("enrol: refused %s for subject %s: %s", principal.name, request.subject_id, exc)
        return Reply(request_id=rid, ok=False, error=f"refused: {exc}")
    except Exception as exc:  # storage trouble costs the station a retry, never the service thread
        log.exception("enrol: could not store subject %s from %s", request.subject_id, principal.name)
        return Reply(request_id=rid, ok=False, error=f"central error: {type(exc).__name__}")
    log.info("enrol: %s enrolled %s into %s (%d template(s), change %d)", principal.name, request.subject_id,
             ", ".join(scope_label(s) for s in request.scopes), len(request.templates), result.seq)
    return Reply(request_id=rid, ok=True, change_seq=result.seq)

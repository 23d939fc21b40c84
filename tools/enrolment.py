"""Enrolment at the central from photo folders: vision makes the templates, the central
stores and publishes them. This is the one place the two meet (vision never imports sync and
sync never imports vision), so both `gate-central enrol` and the demo call it.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sync.scopes import ScopeError, check_id
from vision.enrol import PhotoVerdict, enrol_photos, photos_in


@dataclass
class FolderEnrolment:
    enrolled: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # subject id -> why nothing was enrolled
    rejects: list[PhotoVerdict] = field(default_factory=list)  # individual photos refused


def enrol_folder(central, pipeline, folder: Path, scopes: list[str], list_type: str = "allow",
                 valid_from: dt.datetime | None = None, valid_until: dt.datetime | None = None,
                 subjects: list[str] | None = None, progress: Callable[[int, int], None] | None = None
                 ) -> FolderEnrolment:
    """One subject per sub-folder (its name is the pseudonymous subject id). All of a subject's
    acceptable photos become its templates; a subject with none is skipped, never enrolled
    empty. The central refuses to mix model ids within a scope.

    A bad item never stops the batch: a folder whose name cannot be a subject id (ids are
    opaque, a document number or a provider's id, so `Nguyễn_Văn_An` is refused rather than
    transliterated into something that looks like an id), or a subject the central refuses,
    is reported in `skipped` with the reason and the others go on."""
    folder = Path(folder)
    people = sorted(p for p in folder.iterdir() if p.is_dir())
    if subjects is not None:
        wanted = set(subjects)
        people = [p for p in people if p.name in wanted]
    if not people:
        raise ValueError(f"{folder} has no sub-folders (one per person, named by subject id)")
    out = FolderEnrolment()
    for i, person in enumerate(people):
        try:
            check_id(person.name, "folder name (subject id)")
        except ScopeError as exc:
            out.skipped[person.name] = f"{exc}; subject ids are opaque (document number or provider id)"
        else:
            r = enrol_photos(pipeline, person.name, photos_in(person))
            out.rejects += [v for v in r.verdicts if not v.accepted]
            if len(r.vectors) == 0:
                out.skipped[person.name] = "no acceptable photo"
            else:
                try:
                    central.enrol_subject(person.name, list_type, scopes, valid_from, valid_until, r.model_id,
                                           r.vectors)
                    out.enrolled.append(person.name)
                except ValueError as exc:  # EnrolmentError, ModelMixError: this subject only
                    out.skipped[person.name] = f"refused by the central: {exc}"
        if progress:
            progress(i + 1, len(people))
    return out

"""Template matching: `Matcher` for 1:N search and 1:1 verification (see matcher.py for how the
compact scan stays exact)."""
from vision.match.matcher import MAX_TEMPLATES_PER_SUBJECT, Match, Matcher
from vision.match.segments import Precision

__all__ = ["Match", "Matcher", "Precision", "MAX_TEMPLATES_PER_SUBJECT"]

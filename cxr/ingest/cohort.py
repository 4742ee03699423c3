"""Cohort filters: which images to keep by the age and view their metadata gives (--min-age,
--max-age, --views, --unknown-age, --unknown-view: cxr.config.CohortConfig).

An image a filter removes becomes a recorded reject, never a silent loss: `age_out_of_range`,
`view_not_selected`, and, when the policy for an unknown value is `reject`, `age_unknown` and
`view_unknown`. Age and view are read from an item's extra columns (metadata.EXTRA_PREFIX +
"age" / "view", matched case-insensitively, so a --metadata CSV's `Age` or `VIEW` column
counts), as a public collection's adapter (cxr.ingest.collections) or a --metadata CSV put
them there. A reject's detail names the bound and the column, never the patient's value.

Collections spell ages and views freely ("50+", "early 40s", "045Y"; "AP Supine", "AP
erect"), so an age is read as the range of years it allows (`age_range`) and a view as its
first word (`view_code`). A range that lies wholly inside the bounds is kept, wholly outside
is `age_out_of_range`, and one that straddles a bound ("40s" against --min-age 45) cannot be
decided: it follows --unknown-age, like a missing age.

A collection that states only its cohort, not each patient's age (the paediatric pneumonia
set: children, no ages), gives an item the extra column `cohort`; COHORT_AGES turns it into
an age range, so that --min-age 18 drops those children as `age_out_of_range`.

Some images carry their age and view only inside the file (RSNA's DICOM headers): their
listing marks them AT_READ, an unknown value of theirs is left here for the worker to
decide from the header (cxr.preprocess.dicom, `decode_dicom(..., cohort=...)`).
"""

from __future__ import annotations

import dataclasses
import re

from cxr.config import CohortConfig
from cxr.ingest.metadata import EXTRA_PREFIX
from cxr.ingest.sources import Listing, reject_row

AGE, VIEW, COHORT = "age", "view", "cohort"
# An item key: True when the image's age and view are in its own header, read by the worker.
AT_READ = "cohort_at_read"
PAEDIATRIC = "paediatric"
# A stated cohort's ages in years (upper bound exclusive in spirit: "under 18").
COHORT_AGES = {PAEDIATRIC: (0.0, 17.99)}
# "early/mid/late 40s": the decade's thirds.
_DECADE_PARTS = {"early": (0, 3), "mid": (3, 7), "late": (7, 9.99)}
# DICOM Age String units (PS3.5 6.2: nnnD, nnnW, nnnM, nnnY) in years.
_DICOM_AGE_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def age_range(text: str | None) -> tuple[float, float] | None:
    """The years an age as collections write it allows, (low, high); None when unknown.

    "65" and "065Y" (a DICOM Age String) are one age; "50+" is 50 or more; "40s" the
    decade, "early 40s" / "mid 50s" / "late 60s" a third of it; "1-5" a range.
    """
    value = (text or "").strip()
    if not value:
        return None
    dicom = re.fullmatch(r"(\d{3})([DWMY])", value.upper())
    if dicom:
        years = int(dicom.group(1)) * _DICOM_AGE_UNITS[dicom.group(2)]
        return years, years
    lowered = value.lower()
    number = r"(\d+(?:\.\d+)?)"
    if match := re.fullmatch(number, lowered):
        return float(match.group(1)), float(match.group(1))
    if match := re.fullmatch(number + r"\s*\+", lowered):
        return float(match.group(1)), 130.0
    if match := re.fullmatch(number + r"\s*-\s*" + number, lowered):
        low, high = sorted((float(match.group(1)), float(match.group(2))))
        return low, high
    if match := re.fullmatch(r"(?:(early|mid|late)\s+)?(\d+)0'?s", lowered):
        decade = int(match.group(2)) * 10
        start, end = _DECADE_PARTS.get(match.group(1) or "", (0, 9.99))
        return decade + start, decade + end
    return None


def view_code(text: str | None) -> str | None:
    """A view as --views spells it: the first word, upper case ("AP Supine" -> "AP"); None when unknown."""
    words = (text or "").replace("-", " ").replace("_", " ").upper().split()
    return words[0] if words else None


def extra_value(item: dict, name: str) -> str | None:
    """An item's extra column `name`, whatever its case (a --metadata CSV's `Age` is `age`)."""
    for key, value in item.items():
        if key.startswith(EXTRA_PREFIX) and key[len(EXTRA_PREFIX):].lower() == name:
            return value
    return None


def age_verdict(years: tuple[float, float] | None, cohort: CohortConfig, what: str) -> tuple[str, str] | None:
    """The reject (reason, detail) an age range earns, or None to keep it; `what` names where it was read."""
    if cohort.min_age is None and cohort.max_age is None:
        return None
    low_bound = cohort.min_age if cohort.min_age is not None else 0.0
    high_bound = cohort.max_age if cohort.max_age is not None else float("inf")
    if years is not None:
        low, high = years
        if high < low_bound or low > high_bound:
            return "age_out_of_range", f"{what} outside --min-age/--max-age ({_bounds(cohort)})"
        if low >= low_bound and high <= high_bound:
            return None
    if cohort.unknown_age == "reject":
        unknown = "unknown" if years is None else "not precise enough to tell"
        return "age_unknown", f"{what} {unknown}; --unknown-age reject ({_bounds(cohort)})"
    return None


def view_verdict(view: str | None, cohort: CohortConfig, what: str) -> tuple[str, str] | None:
    """The reject (reason, detail) a view code earns, or None to keep it."""
    if not cohort.views:
        return None
    if view is None:
        return ("view_unknown", f"{what} unknown; --unknown-view reject") if cohort.unknown_view == "reject" else None
    if view not in cohort.views:
        return "view_not_selected", f"{what} not among --views {','.join(cohort.views)}"
    return None


def _bounds(cohort: CohortConfig) -> str:
    low = "" if cohort.min_age is None else f"{cohort.min_age:g}"
    high = "" if cohort.max_age is None else f"{cohort.max_age:g}"
    return f"{low}..{high} years"


def item_verdict(item: dict, cohort: CohortConfig) -> tuple[str, str] | None:
    """Why a listed item fails the cohort, or None: its age first, then its view."""
    at_read = bool(item.get(AT_READ))
    years = age_range(extra_value(item, AGE))
    what = "age in the metadata"
    if years is None and extra_value(item, COHORT) in COHORT_AGES:
        years, what = COHORT_AGES[extra_value(item, COHORT)], f"the {extra_value(item, COHORT)} cohort's age"
    if not (at_read and years is None):  # else the worker decides, from the image's header
        verdict = age_verdict(years, cohort, what)
        if verdict:
            return verdict
    view = view_code(extra_value(item, VIEW))
    if at_read and view is None:
        return None
    return view_verdict(view, cohort, "view in the metadata")


def apply_cohort(listing: Listing, cohort: CohortConfig) -> Listing:
    """The listing with every item that fails the cohort moved to its rejects (copies, not the originals).

    Call it after every source of an item's age and view is attached (a collection's
    metadata, a --metadata CSV).
    """
    if not cohort.enabled:
        return listing
    items, rejects = [], list(listing.rejects)
    for item in listing.items:
        verdict = item_verdict(item, cohort)
        if verdict is None:
            items.append(item)
        else:
            rejects.append({**reject_row(item["source_uri"], item["class_name"], *verdict),
                            "source": item.get("source")})
    return dataclasses.replace(listing, items=items, rejects=rejects)

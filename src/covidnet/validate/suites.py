"""The three suites of the ``validate`` stage, as data: which expectation on which column.

Each suite reads one table (:mod:`covidnet.validate.tables`):

``patients`` (``patients.csv``, every column text)
    ``patient_id`` present and unique; ``label`` in :data:`covidnet.data.cohort.LABELS`;
    ``hospital`` present (and known, when a list is given); ``pcr_positive_date`` present
    for COVID-19 patients, empty for the others, a valid ``YYYY-MM-DD`` date not before
    ``scan_date_min``; ``sex`` in F/M/O; ``age`` a whole number within ``age``.

``scans`` (``scans.csv``, every column text)
    ``study_uid`` present, unique, a DICOM UID; ``series_uid`` a DICOM UID or empty;
    ``patient_id`` one of the patients; ``scan_date`` a valid date not before
    ``scan_date_min``; ``motion_artifact`` 0 or 1.

``series`` (the header table of the series selected for each study, :mod:`covidnet.data.dicom`)
    modality CT; pixel spacing, slice thickness and slice count within their ranges;
    ``study_date`` a valid date not before ``scan_date_min`` and equal to the study's
    ``scan_date`` in ``scans.csv`` (helper column ``scan_date_matches``); ``series_uid``
    unique; ``patient_id`` and ``study_uid`` known to the manifest.

A suite is a list of :class:`Rule`: a Great Expectations expectation named as GX names it in
its results (``expect_column_values_to_be_in_set``) with its arguments. Only
:mod:`covidnet.validate.gx` turns rules into GX objects, so this module imports no GX. Every
number comes from :class:`ValidateParams` (the ``validate:`` section of ``params.yaml``).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from covidnet.data.cohort import LABELS, PATIENTS_FILE, SCANS_FILE
from covidnet.validate.tables import _LABEL, _MATCH, ISO_DATE_FORMAT, ISO_DATE_REGEX

SUITES = ("patients", "scans", "series")
#: Where each suite's rows come from, as named in messages.
SUITE_SOURCE = {"patients": PATIENTS_FILE, "scans": SCANS_FILE, "series": "series table"}

UID_REGEX = r"^[0-9]+(?:\.[0-9]+)*$"
INTEGER_REGEX = r"^[0-9]+$"
SEXES = ("F", "M", "O")
MOTION_FLAGS = ("0", "1")
MODALITY = "CT"
DATE_SCOPES = ("all", "covid")


@dataclass(frozen=True)
class ValidateParams:
    """The ``validate:`` section of ``params.yaml``.

    Attributes:
        hospitals_known: the CLI passes the configured hospitals as ``known_hospitals``
            (synthetic cohorts only); :func:`covidnet.validate.cohort.validate_cohort` itself
            only reads the list.
        pixel_spacing_mm: inclusive range of the selected series' in-plane spacing (mm).
        slice_thickness_mm: inclusive range of their slice thickness (mm).
        slices: inclusive range of their number of slices.
        scan_date_min: ISO date no scan, study or PCR date may precede.
        scan_date_min_scope: ``all`` applies ``scan_date_min`` to every patient;
            ``covid`` to COVID-19 patients only (older non-COVID controls allowed).
        age: inclusive range of the age in years.
        uid_max_length: the longest DICOM UID accepted (characters).
        max_examples: unexpected values kept per failed expectation.
        min_studies: usable studies (a series chosen) below which the cohort is an error, not
            something to validate (an empty or nearly empty DICOM folder).
    """

    hospitals_known: bool
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: tuple[float, float]
    slices: tuple[int, int]
    scan_date_min: str
    scan_date_min_scope: str
    age: tuple[int, int]
    uid_max_length: int
    max_examples: int
    min_studies: int

    def __post_init__(self) -> None:
        if self.min_studies < 1:
            raise ValueError(f"validate.min_studies: must be >= 1, got {self.min_studies}")
        for name in ("pixel_spacing_mm", "slice_thickness_mm", "slices", "age"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"validate.{name}: expected [low, high] with low <= high, got {list(value)}")
        if not re.match(ISO_DATE_REGEX, self.scan_date_min):
            raise ValueError(f"validate.scan_date_min: expected YYYY-MM-DD, got {self.scan_date_min!r}")
        try:
            dt.datetime.strptime(self.scan_date_min, ISO_DATE_FORMAT)
        except ValueError:
            raise ValueError(f"validate.scan_date_min: not a valid date: {self.scan_date_min!r}") from None
        if self.scan_date_min_scope not in DATE_SCOPES:
            raise ValueError(
                f"validate.scan_date_min_scope: expected one of {list(DATE_SCOPES)}, got {self.scan_date_min_scope!r}"
            )
        if self.uid_max_length < 1:
            raise ValueError(f"validate.uid_max_length: must be positive, got {self.uid_max_length}")
        if self.max_examples < 1:
            raise ValueError(f"validate.max_examples: must be positive, got {self.max_examples}")


@dataclass(frozen=True)
class Rule:
    """One expectation of a suite.

    Attributes:
        expectation: the Great Expectations type as its results name it,
            e.g. ``expect_column_values_to_be_in_set``.
        column: the column of the table GX sees (a helper column is named for messages by
            ``kwargs["meta"]["column"]``).
        kwargs: the expectation's other arguments (``value_set``, ``min_value``, ``regex``,
            ``meta``...).
        when: ``(column, value)``: only rows whose ``column`` equals ``value`` are checked
            (GX's ``row_condition``); None checks every row.
    """

    expectation: str
    column: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    when: tuple[str, str] | None = None


def _rule(expectation: str, column: str, when: tuple[str, str] | None = None, **kwargs: Any) -> Rule:
    return Rule(expectation, column, kwargs, when)


def _date_rules(column: str, value_column: str, params: ValidateParams, *, required: bool) -> list[Rule]:
    """Not null (when required), ``YYYY-MM-DD``, a real date, not before ``scan_date_min``."""
    rules = [_rule("expect_column_values_to_not_be_null", column)] if required else []
    rules += [
        _rule("expect_column_values_to_match_regex", column, regex=ISO_DATE_REGEX, meta={"rule": "YYYY-MM-DD"}),
        _rule("expect_column_values_to_match_strftime_format", column, strftime_format=ISO_DATE_FORMAT),
    ]
    scope = (_LABEL, "covid") if params.scan_date_min_scope == "covid" else None
    rules.append(
        _rule(
            "expect_column_values_to_be_between",
            value_column,
            scope,
            min_value=params.scan_date_min,
            meta={"column": column},
        )
    )
    return rules


def _uid_rules(column: str, params: ValidateParams) -> list[Rule]:
    return [
        _rule("expect_column_values_to_match_regex", column, regex=UID_REGEX,
              meta={"rule": "a DICOM UID (digits and dots)"}),
        _rule("expect_column_value_lengths_to_be_between", column, max_value=params.uid_max_length),
    ]


def _patients_suite(params: ValidateParams, known_hospitals: list[str] | None) -> list[Rule]:
    rules = [
        _rule("expect_column_values_to_not_be_null", "patient_id"),
        _rule("expect_column_values_to_be_unique", "patient_id"),
        _rule("expect_column_values_to_not_be_null", "label"),
        _rule("expect_column_values_to_be_in_set", "label", value_set=list(LABELS)),
        _rule("expect_column_values_to_not_be_null", "hospital"),
    ]
    if known_hospitals is not None:
        rules.append(_rule("expect_column_values_to_be_in_set", "hospital", value_set=sorted(known_hospitals)))
    rules += [
        _rule("expect_column_values_to_not_be_null", "pcr_positive_date", ("label", "covid")),
        _rule("expect_column_values_to_be_null", "pcr_positive_date", ("label", "non_covid")),
    ]
    # The PCR date is checked against scan_date_min only for COVID-19 patients: the others have none.
    rules += _date_rules("pcr_positive_date", "pcr_positive_date_value", params, required=False)
    rules += [
        _rule("expect_column_values_to_not_be_null", "sex"),
        _rule("expect_column_values_to_be_in_set", "sex", value_set=list(SEXES)),
        _rule("expect_column_values_to_not_be_null", "age"),
        _rule("expect_column_values_to_match_regex", "age", regex=INTEGER_REGEX,
              meta={"rule": "a whole number of years"}),
        _rule("expect_column_values_to_be_between", "age_years", min_value=params.age[0], max_value=params.age[1],
              meta={"column": "age"}),
    ]
    return rules


def _scans_suite(params: ValidateParams, patient_ids: list[str]) -> list[Rule]:
    return [
        _rule("expect_column_values_to_not_be_null", "patient_id"),
        _rule("expect_column_values_to_be_in_set", "patient_id", value_set=patient_ids, meta={"rule": "patients.csv"}),
        _rule("expect_column_values_to_not_be_null", "study_uid"),
        _rule("expect_column_values_to_be_unique", "study_uid"),
        *_uid_rules("study_uid", params),
        *_uid_rules("series_uid", params),
        *_date_rules("scan_date", "scan_date_value", params, required=True),
        _rule("expect_column_values_to_not_be_null", "motion_artifact"),
        _rule("expect_column_values_to_be_in_set", "motion_artifact", value_set=list(MOTION_FLAGS)),
    ]


def _series_suite(params: ValidateParams, patient_ids: list[str], study_uids: list[str]) -> list[Rule]:
    return [
        _rule("expect_column_values_to_not_be_null", "modality"),
        _rule("expect_column_values_to_be_in_set", "modality", value_set=[MODALITY]),
        _rule("expect_column_values_to_not_be_null", "pixel_spacing_mm"),
        _rule("expect_column_values_to_be_between", "pixel_spacing_mm",
              min_value=params.pixel_spacing_mm[0], max_value=params.pixel_spacing_mm[1]),
        _rule("expect_column_values_to_be_between", "slice_thickness_mm",
              min_value=params.slice_thickness_mm[0], max_value=params.slice_thickness_mm[1]),
        _rule("expect_column_values_to_not_be_null", "n_slices"),
        _rule("expect_column_values_to_be_between", "n_slices", min_value=params.slices[0], max_value=params.slices[1]),
        *_date_rules("study_date", "study_date_value", params, required=True),
        _rule("expect_column_values_to_not_be_null", "series_uid"),
        _rule("expect_column_values_to_be_unique", "series_uid"),
        _rule("expect_column_values_to_be_in_set", "patient_id", value_set=patient_ids, meta={"rule": "patients.csv"}),
        _rule("expect_column_values_to_be_in_set", "study_uid", value_set=study_uids, meta={"rule": "scans.csv"}),
        _rule(
            "expect_column_values_to_be_in_set",
            _MATCH,
            value_set=[True],
            meta={
                "column": "study_date",
                "rule": "DICOM study date differs from scans.csv scan_date",
                "show": ["study_date", "scan_date"],
            },
        ),
    ]

"""The ``validate`` stage: index the DICOM tree, then run the suites over it and the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from covidnet.validate.messages import ValidationReport


@dataclass(frozen=True)
class ValidateResult:
    """The index of the DICOM tree (:class:`covidnet.data.series.DicomIndex`) and the report."""

    index: Any
    report: ValidationReport

    @property
    def ok(self) -> bool:
        return self.report.success

    def summary(self) -> str:
        n_sel = int(self.index.series["selected"].sum())
        return (f"{len(self.index.series)} series ({n_sel} chosen, one per usable study), "
                f"{len(self.index.skipped)} file(s) skipped; "
                + ("all expectations met" if self.ok else "FAILED"))


def run_validate(params: dict[str, Any], paths, progress: bool = True) -> ValidateResult:
    """Index the DICOM tree (series, files and skipped tables into ``paths.index``) and validate.

    The index is written even when validation fails, so its tables can be inspected; the
    results go to ``paths.validation``.
    """
    from covidnet.data.cohort import read_manifest
    from covidnet.data.index import write_index
    from covidnet.data.series import SeriesParams, index_tree
    from covidnet.errors import InputError
    from covidnet.params import is_synthetic, section
    from covidnet.validate.cohort import validate_cohort
    from covidnet.validate.suites import ValidateParams

    vparams = section(params, "validate", ValidateParams)
    manifest = read_manifest(paths.manifest)
    index = index_tree(paths.dicom, section(params, "series", SeriesParams), progress=progress)
    write_index(index, paths.index)
    usable = int(index.series["selected"].sum()) if len(index.series) else 0
    if usable < vparams.min_studies:
        raise InputError(f"{paths.dicom}: {usable} usable stud{'y' if usable == 1 else 'ies'} (a series chosen) in "
                         f"{len(index.series)} series, {len(index.skipped)} file(s) skipped; validate.min_studies "
                         f"is {vparams.min_studies}: an empty or nearly empty cohort (see {paths.index})")
    known = None
    if is_synthetic(params) and vparams.hospitals_known:
        from covidnet.synthetic.params import SynthParams

        known = [h.name for h in section(params, "synth", SynthParams).hospitals]
    report = validate_cohort(manifest, index.series, vparams, paths.validation, known_hospitals=known,
                             synthetic=is_synthetic(params))
    return ValidateResult(index, report)

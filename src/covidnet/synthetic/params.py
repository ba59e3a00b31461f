"""The ``synth`` section of ``params.yaml``: the SYNTHETIC cohort's size, mix and scanners.

:class:`SynthParams` is what :func:`covidnet.synthetic.synth.synthesize` reads: how many
patients, the COVID-19 fraction, scans per patient and days between them, how hard the
findings are to tell apart (``difficulty``), the in-plane ``matrix`` (pixels) and the
cranio-caudal coverage ``z_extent_mm`` (mm), how many patients to plant for each exclusion
rule (:class:`ExclusionCases`) and one :class:`HospitalProfile` per hospital (scanner,
kernel, noise in HU, slice thickness in mm, field of view in mm, rescale intercept/slope,
signedness, transfer syntax). Every field is validated on construction, so a bad
``params.yaml`` fails before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

from covidnet.params import ParamsError
from covidnet.synthetic.dicom_writer import CODECS


@dataclass(frozen=True)
class HospitalProfile:
    """One hospital's scanner and how it encodes pixels (``synth.hospitals[i]``).

    Attributes:
        name: the hospital (``InstitutionName``, ``patients.csv`` ``hospital``); unique.
        manufacturer, model, kernel: ``Manufacturer``, ``ManufacturerModelName``,
            ``ConvolutionKernel``.
        noise_hu: standard deviation of the image noise (HU).
        slice_thickness_mm: slice thickness and step (mm), in [0.5, 10].
        matrix_scale: in-plane matrix relative to ``synth.matrix``.
        fov_mm: in-plane field of view (mm).
        rescale_intercept, rescale_slope: ``HU = stored * slope + intercept``.
        pixel_representation: 0 unsigned, 1 signed stored values.
        codec: transfer syntax of the studies drawn as compressed (``synth.compressed_fraction``),
            a key of :data:`covidnet.synthetic.dicom_writer.CODECS`; ``none`` writes them as RLE.
    """

    name: str
    manufacturer: str
    model: str
    kernel: str
    noise_hu: float
    slice_thickness_mm: float
    matrix_scale: float
    fov_mm: float
    rescale_intercept: float
    rescale_slope: float
    pixel_representation: int
    codec: str


@dataclass(frozen=True)
class ExclusionCases:
    """How many patients to plant for each exclusion rule (``synth.exclusion_cases``)."""

    pcr_gap: int
    motion: int
    contrast_only: int
    broken_series: int


@dataclass(frozen=True)
class SynthParams:
    """The ``synth`` section of ``params.yaml``; validated on construction.

    Raises:
        ParamsError: (a ``ValueError``) naming the field and the offending value.
    """

    seed: int
    n_patients: int
    covid_fraction: float
    scans_per_patient: tuple[int, int]
    days_between_scans: tuple[int, int]
    difficulty: float
    no_finding_fraction: float
    diffuse_ggo_fraction: float
    consolidation_fraction: float
    effusion_fraction: float
    contrast_fraction: float
    compressed_fraction: float
    matrix: int
    z_extent_mm: float
    first_scan_after_pcr_days: tuple[int, int]
    exclusion_cases: ExclusionCases
    hospitals: tuple[HospitalProfile, ...]
    workers: int                       # processes writing studies; the bytes written do not depend on it

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ParamsError(f"synth.workers: {self.workers!r} must be at least 1")
        for name in (
            "covid_fraction",
            "difficulty",
            "no_finding_fraction",
            "diffuse_ggo_fraction",
            "consolidation_fraction",
            "effusion_fraction",
            "contrast_fraction",
            "compressed_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ParamsError(f"synth.{name}: {value!r} is outside [0, 1]")
        if self.n_patients < 1:
            raise ParamsError(f"synth.n_patients: {self.n_patients!r} must be at least 1")
        if self.matrix < 8:
            raise ParamsError(f"synth.matrix: {self.matrix!r} must be at least 8")
        if self.z_extent_mm <= 0:
            raise ParamsError(f"synth.z_extent_mm: {self.z_extent_mm!r} must be positive")
        for name in ("scans_per_patient", "days_between_scans", "first_scan_after_pcr_days"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1]:
                raise ParamsError(f"synth.{name}: {list(value)!r} must be an inclusive range [low, high]")
        if self.scans_per_patient[0] < 1:
            raise ParamsError(f"synth.scans_per_patient: {list(self.scans_per_patient)!r} must start at 1 or more")
        if self.days_between_scans[0] < 1:
            raise ParamsError(f"synth.days_between_scans: {list(self.days_between_scans)!r} must start at 1 or more")
        for name in ("pcr_gap", "motion", "contrast_only", "broken_series"):
            value = getattr(self.exclusion_cases, name)
            if value < 0:
                raise ParamsError(f"synth.exclusion_cases.{name}: {value!r} must not be negative")
        planted = sum(getattr(self.exclusion_cases, n) for n in ("pcr_gap", "motion", "contrast_only", "broken_series"))
        if planted > self.n_patients:
            raise ParamsError(f"synth.exclusion_cases: {planted} planted patients exceed synth.n_patients={self.n_patients}")
        if self.exclusion_cases.pcr_gap > round(self.n_patients * self.covid_fraction):
            raise ParamsError(
                f"synth.exclusion_cases.pcr_gap: {self.exclusion_cases.pcr_gap} exceeds the "
                f"{round(self.n_patients * self.covid_fraction)} COVID-19 patients"
            )
        if not self.hospitals:
            raise ParamsError("synth.hospitals: at least one hospital is required")
        names = set()
        for i, h in enumerate(self.hospitals):
            where = f"synth.hospitals[{i}]"
            if h.codec not in CODECS:
                raise ParamsError(f"{where}.codec: {h.codec!r} is not one of {', '.join(CODECS)}")
            if h.pixel_representation not in (0, 1):
                raise ParamsError(f"{where}.pixel_representation: {h.pixel_representation!r} is not 0 (unsigned) or 1 (signed)")
            if h.rescale_slope <= 0:
                raise ParamsError(f"{where}.rescale_slope: {h.rescale_slope!r} must be positive")
            if not 0.5 <= h.slice_thickness_mm <= 10.0:
                raise ParamsError(f"{where}.slice_thickness_mm: {h.slice_thickness_mm!r} is outside [0.5, 10]")
            for name in ("noise_hu",):
                if getattr(h, name) < 0:
                    raise ParamsError(f"{where}.{name}: {getattr(h, name)!r} must not be negative")
            for name in ("matrix_scale", "fov_mm"):
                if getattr(h, name) <= 0:
                    raise ParamsError(f"{where}.{name}: {getattr(h, name)!r} must be positive")
            if h.codec == "jpeg2000" and self.compressed_fraction > 0 and round(self.matrix * h.matrix_scale) < 32:
                raise ParamsError(
                    f"{where}.codec: 'jpeg2000' needs a matrix of at least 32 pixels, "
                    f"got synth.matrix x matrix_scale = {round(self.matrix * h.matrix_scale)}"
                )
            if h.name in names:
                raise ParamsError(f"{where}.name: {h.name!r} is used twice")
            names.add(h.name)


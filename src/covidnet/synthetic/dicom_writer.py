"""Write SYNTHETIC CT series as real DICOM files (CT Image Storage), one file per slice.

The writer under :mod:`covidnet.synthetic.synth` (the cohort) and the tests and benchmarks that need a
series of known content: :func:`write_series` encodes a HU volume ``(D, H, W)`` with a
scanner's rescale intercept/slope, signedness and transfer syntax (:data:`CODECS`: RLE,
JPEG-LS, JPEG 2000 lossless, uncompressed), :func:`write_localizer` adds a LOCALIZER image,
:func:`write_benchmark_series` one paper-sized phantom series. UIDs are derived from seeds
(:func:`uid`), and no wall-clock date or time is written: the same input gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pydicom.uid
from pydicom.dataset import FileDataset, FileMetaDataset

from covidnet.synthetic.anatomy import covid_findings, random_anatomy
from covidnet.synthetic.phantom import draw_chest

CODECS = {
    "rle": pydicom.uid.RLELossless,
    "jpeg_ls": pydicom.uid.JPEGLSLossless,
    "jpeg2000": pydicom.uid.JPEG2000Lossless,
    "none": pydicom.uid.ExplicitVRLittleEndian,
}
_UID_ROOT = "1.2.826.0.1.3680043.8.498."


@dataclass(frozen=True)
class SeriesHeader:
    """Header fields of one series; defaults make :func:`write_series` usable alone."""

    patient_id: str = "SYNTH-0000"
    patient_sex: str = "O"
    patient_age: int = 50
    study_uid: str = ""  # "" -> derived from uid_entropy
    series_uid: str = ""  # "" -> derived from uid_entropy
    study_date: str = "20200301"  # DICOM DA
    study_time: str = "090000"  # DICOM TM
    accession_number: str = "SYNTH0000"
    study_id: str = "1"
    series_number: int = 2
    series_description: str = "CHEST AXIAL SYNTHETIC"
    institution: str = "synthetic"
    manufacturer: str = "SYNTHETIC"
    model: str = "PHANTOM"
    kernel: str = "STANDARD"
    contrast_agent: str = ""  # set only on contrast-enhanced series
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    uid_entropy: str = "synthetic"


def uid(*parts: object) -> str:
    """A DICOM UID under the synthetic root, derived from ``parts`` (the same parts, the same UID)."""
    return str(pydicom.uid.generate_uid(prefix=_UID_ROOT, entropy_srcs=[str(p) for p in parts]))


def stored_encoding(rescale_intercept: float, rescale_slope: float, pixel_representation: int) -> tuple[float, int]:
    """The intercept actually written and ``BitsStored`` for an encoding.

    Unsigned pixels cannot hold negative HU with an intercept above -1024, so an unsigned
    encoding with such an intercept is written with intercept -1024 instead.
    """
    intercept = float(rescale_intercept)
    if pixel_representation == 0 and intercept > -1024.0:
        intercept = -1024.0
    bits = 12 if (pixel_representation == 0 and rescale_slope >= 1.0) else 16
    return intercept, bits


def encode_hu(volume_hu: np.ndarray, rescale_intercept: float, rescale_slope: float, pixel_representation: int, bits_stored: int) -> np.ndarray:
    """HU -> stored integers: ``round((HU - intercept) / slope)`` clipped to the stored range."""
    if pixel_representation == 1:
        lo, hi, dtype = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1, np.int16
    else:
        lo, hi, dtype = 0, 2**bits_stored - 1, np.uint16
    stored = np.rint((np.asarray(volume_hu, np.float64) - rescale_intercept) / rescale_slope)
    return np.clip(stored, lo, hi).astype(dtype)


def _dataset(
    header: SeriesHeader,
    pixels: np.ndarray,
    *,
    instance: int,
    sop_uid: str,
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    thickness: float,
    intercept: float,
    slope: float,
    pixel_representation: int,
    bits_stored: int,
    codec: str,
    series_uid: str,
    study_uid: str,
    spacing_between: float | None,
) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    meta.ImplementationClassUID = _UID_ROOT + "1"
    meta.ImplementationVersionName = "COVIDNET_SYNTH"
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(header.image_type)
    ds.SOPClassUID = pydicom.uid.CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = header.study_date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = header.study_time
    ds.AccessionNumber = header.accession_number
    ds.Modality = "CT"
    ds.Manufacturer = header.manufacturer
    ds.InstitutionName = header.institution
    ds.StudyDescription = "CT CHEST SYNTHETIC"
    ds.SeriesDescription = header.series_description
    ds.ManufacturerModelName = header.model
    ds.PatientName = f"SYNTHETIC^{header.patient_id}"
    ds.PatientID = header.patient_id
    ds.PatientSex = header.patient_sex
    ds.PatientAge = f"{int(header.patient_age):03d}Y"
    ds.PatientIdentityRemoved = "YES"
    ds.BodyPartExamined = "CHEST"
    if header.contrast_agent:
        ds.ContrastBolusAgent = header.contrast_agent
    ds.SliceThickness = f"{thickness:.6g}"
    if spacing_between is not None:
        ds.SpacingBetweenSlices = f"{spacing_between:.6g}"
    ds.KVP = "120"
    ds.ConvolutionKernel = header.kernel
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = header.study_id
    ds.SeriesNumber = header.series_number
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6g}" for v in orientation]
    ds.FrameOfReferenceUID = uid(study_uid, "frame")
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = f"{position[2]:.6g}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.PixelSpacing = [f"{v:.6g}" for v in pixel_spacing]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = pixel_representation
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.RescaleIntercept = f"{intercept:.6g}"
    ds.RescaleSlope = f"{slope:.6g}"
    ds.RescaleType = "HU"
    _set_pixels(ds, pixels, codec)
    return ds


def _set_pixels(ds: FileDataset, pixels: np.ndarray, codec: str) -> None:
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    if "PixelData" in ds:
        del ds.PixelData
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if codec != "none":
        ds.compress(CODECS[codec], pixels, generate_instance_uid=False)


def _set_instance(ds: FileDataset, sop_uid: str, instance: int, position: Sequence[float]) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
    ds.SliceLocation = f"{position[2]:.6g}"


def write_series(
    out_dir: Path,
    volume_hu: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    codec: str = "none",
    rescale_intercept: float = -1024.0,
    rescale_slope: float = 1.0,
    pixel_representation: int = 1,
    header: SeriesHeader | None = None,
    origin_mm: tuple[float, float, float] | None = None,
    file_names: Sequence[str] | None = None,
    skip_slices: Sequence[int] = (),
) -> list[Path]:
    """Write an axial volume as one DICOM CT series, one file per slice.

    Args:
        out_dir: folder for the files (created).
        volume_hu: ``(D, H, W)`` HU, slice 0 the most cranial. Values are stored as
            ``round((HU - intercept) / slope)`` clipped to the stored range, so whole HU (or
            multiples of the slope) decode back exactly.
        spacing: ``(slice step, row spacing, column spacing)`` in mm; the slice step is also
            written as SliceThickness.
        codec: ``rle``, ``jpeg_ls``, ``jpeg2000`` (all lossless; JPEG 2000 needs slices of
            at least 32x32 pixels) or ``none`` (Explicit VR Little Endian).
        rescale_intercept: RescaleIntercept (an unsigned encoding above -1024 is written
            with -1024, see :func:`stored_encoding`).
        rescale_slope: RescaleSlope.
        pixel_representation: 0 unsigned, 1 signed.
        header: patient/study/series fields; UIDs left empty are derived from
            ``header.uid_entropy`` (deterministic).
        origin_mm: ImagePositionPatient of slice 0 (default: centred in-plane, z = 0).
        file_names: one name per written slice (default ``IM00001.dcm``...).
        skip_slices: slice indices not written (a broken series: a gap in positions).

    Returns:
        The written file paths, in slice order.
    """
    if codec not in CODECS:
        raise ValueError(f"codec: {codec!r} is not one of {', '.join(CODECS)}")
    if pixel_representation not in (0, 1):
        raise ValueError(f"pixel_representation: {pixel_representation!r} is not 0 or 1")
    volume_hu = np.asarray(volume_hu)
    if volume_hu.ndim != 3:
        raise ValueError(f"volume_hu: expected (D, H, W), got shape {volume_hu.shape}")
    if codec == "jpeg2000" and min(volume_hu.shape[1:]) < 32:
        raise ValueError(f"codec: 'jpeg2000' needs slices of at least 32x32 pixels, got {volume_hu.shape[1:]}")
    header = header or SeriesHeader()
    d, h, w = volume_hu.shape
    dz, dy, dx = (float(s) for s in spacing)
    if origin_mm is None:
        origin_mm = (-(w - 1) / 2.0 * dx, -(h - 1) / 2.0 * dy, 0.0)
    study_uid = header.study_uid or uid(header.uid_entropy, "study")
    series_uid = header.series_uid or uid(header.uid_entropy, "series", header.series_number)
    intercept, bits = stored_encoding(rescale_intercept, rescale_slope, pixel_representation)
    stored = encode_hu(volume_hu, intercept, rescale_slope, pixel_representation, bits)
    keep = [k for k in range(d) if k not in set(skip_slices)]
    if file_names is not None and len(file_names) != len(keep):
        raise ValueError(f"file_names: {len(file_names)} names for {len(keep)} slices")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    ds = None
    for n, k in enumerate(keep):
        position = (origin_mm[0], origin_mm[1], origin_mm[2] - k * dz)
        sop_uid = uid(series_uid, "instance", k)
        if ds is None:
            ds = _dataset(
                header,
                stored[k],
                instance=k + 1,
                sop_uid=sop_uid,
                position=position,
                orientation=(1, 0, 0, 0, 1, 0),
                pixel_spacing=(dy, dx),
                thickness=dz,
                intercept=intercept,
                slope=rescale_slope,
                pixel_representation=pixel_representation,
                bits_stored=bits,
                codec=codec,
                series_uid=series_uid,
                study_uid=study_uid,
                spacing_between=dz,
            )
        else:  # same header, next slice: only the instance fields and pixels change
            _set_instance(ds, sop_uid, k + 1, position)
            _set_pixels(ds, stored[k], codec)
        path = out_dir / (file_names[n] if file_names is not None else f"IM{k + 1:05d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_localizer(
    path: Path,
    image_hu: np.ndarray,
    *,
    header: SeriesHeader,
    study_uid: str,
    series_uid: str,
    instance: int,
    spacing: tuple[float, float],
    position: tuple[float, float, float],
    orientation: tuple[float, ...],
    intercept: float,
    slope: float,
    pixel_representation: int,
) -> None:
    intercept, bits = stored_encoding(intercept, slope, pixel_representation)
    pixels = encode_hu(image_hu, intercept, slope, pixel_representation, bits)
    ds = _dataset(
        header,
        pixels,
        instance=instance,
        sop_uid=uid(series_uid, "instance", instance),
        position=position,
        orientation=orientation,
        pixel_spacing=spacing,
        thickness=1.0,
        intercept=intercept,
        slope=slope,
        pixel_representation=pixel_representation,
        bits_stored=bits,
        codec="none",
        series_uid=series_uid,
        study_uid=study_uid,
        spacing_between=None,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_benchmark_series(out_dir: Path, *, matrix: int = 512, n_slices: int = 300, seed: int = 0) -> Path:
    """Write one synthetic ``n_slices`` x ``matrix`` x ``matrix`` chest series (1 mm slices).

    For the preprocessing benchmark. The series has COVID-19-like findings, 15 HU noise,
    a 360 mm field of view, intercept -1024, signed pixels, uncompressed.

    Returns:
        The series folder (``out_dir / "series"``).
    """
    rng = np.random.default_rng(seed)
    thickness = 1.0
    anatomy = random_anatomy(rng, n_slices * thickness)
    findings = covid_findings(rng, anatomy, consolidation=True)
    spacing = (thickness, 360.0 / matrix, 360.0 / matrix)
    volume = draw_chest((n_slices, matrix, matrix), spacing, anatomy, findings, noise_hu=15.0, rng=rng)
    folder = Path(out_dir) / "series"
    write_series(folder, volume, spacing, header=SeriesHeader(uid_entropy=f"benchmark-{seed}-{matrix}-{n_slices}"))
    return folder

"""Tests of the SYNTHETIC cohort writer (covidnet.synthetic.synth): real DICOM files, manifest, planted cases."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from covidnet.data.cohort import LABELS, PATIENT_COLUMNS, SCAN_COLUMNS, read_manifest
from covidnet.params import load_params, section
from covidnet.synthetic.dicom_writer import CODECS, SeriesHeader, write_series
from covidnet.synthetic.params import SynthParams
from covidnet.synthetic.synth import PLANTED_FILE, synthesize
from support import REPO

PARAMS_FILE = REPO / "params.yaml"


def _tiny(**changes: object) -> SynthParams:
    params = section(load_params(PARAMS_FILE, profile="tiny"), "synth", SynthParams)
    # compressed_fraction: enough that 6 patients hold compressed series of several codecs
    changes = {"n_patients": 6, "scans_per_patient": (1, 2), "compressed_fraction": 0.6, **changes}
    return dataclasses.replace(params, **changes)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_all(dicom_dir: Path) -> list[pydicom.Dataset]:
    out = []
    for path in sorted(dicom_dir.rglob("*")):
        if path.is_file() and path.suffix not in (".txt", ".json"):
            out.append(pydicom.dcmread(path))
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("cohort")
    summary = synthesize(_tiny(), root / "dicom", root / "manifest", workers=2)
    return root / "dicom", root / "manifest", summary


def test_files_are_dicom_with_hierarchy(cohort) -> None:
    dicom_dir, manifest_dir, summary = cohort
    datasets = _read_all(dicom_dir)
    assert len(datasets) == summary.files
    manifest = read_manifest(manifest_dir)
    studies = dict(zip(manifest.scans.study_uid, manifest.scans.patient_id, strict=True))
    for ds in datasets:
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT" and ds.BitsAllocated == 16
        assert ds.HighBit == ds.BitsStored - 1
        assert studies[ds.StudyInstanceUID] == ds.PatientID
        assert ds.StudyDate == manifest.scans.set_index("study_uid").scan_date[ds.StudyInstanceUID].replace("-", "")
        assert ds.RescaleType == "HU"
        _ = ds.pixel_array  # every transfer syntax decodes
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    syntaxes = {ds.file_meta.TransferSyntaxUID for ds in datasets}
    assert pydicom.uid.ExplicitVRLittleEndian in syntaxes and len(syntaxes) > 1


def test_every_study_has_a_localizer_and_contrast_is_labelled(cohort) -> None:
    dicom_dir, manifest_dir, _ = cohort
    datasets = _read_all(dicom_dir)
    manifest = read_manifest(manifest_dir)
    localizer_studies = {ds.StudyInstanceUID for ds in datasets if "LOCALIZER" in ds.ImageType}
    assert localizer_studies == set(manifest.scans.study_uid)
    for ds in datasets:
        if "ContrastBolusAgent" in ds:
            assert "CONTRAST" in ds.SeriesDescription
    reviewed = set(manifest.scans.series_uid) - {""}
    for ds in datasets:
        if ds.SeriesInstanceUID in reviewed:
            assert "ContrastBolusAgent" not in ds and list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]


def test_manifest_schema_and_labels(cohort) -> None:
    _, manifest_dir, summary = cohort
    patients = pd.read_csv(manifest_dir / "patients.csv", dtype=str, keep_default_na=False)
    scans = pd.read_csv(manifest_dir / "scans.csv", dtype=str, keep_default_na=False)
    assert tuple(patients.columns) == PATIENT_COLUMNS
    assert tuple(scans.columns) == SCAN_COLUMNS
    assert set(patients.label) <= set(LABELS)
    covid = patients.label == "covid"
    assert (patients.pathogen[covid] == "SARS-CoV-2").all()
    assert (patients.pcr_positive_date[covid] != "").all() and (patients.pcr_positive_date[~covid] == "").all()
    assert (pd.to_datetime(scans.scan_date) >= "2020-01-01").all()
    assert set(scans.motion_artifact) <= {"0", "1"}
    assert scans.study_uid.is_unique and len(scans) == summary.scans
    assert dict(patients.label.value_counts()) == summary.patients


def test_planted_cases(cohort) -> None:
    dicom_dir, manifest_dir, _ = cohort
    planted = pd.read_csv(manifest_dir / PLANTED_FILE, dtype=str, keep_default_na=False)
    assert sorted(planted.case) == ["broken_series", "contrast_only", "motion", "pcr_gap"]
    manifest = read_manifest(manifest_dir)
    patients, scans = manifest.patients.set_index("patient_id"), manifest.scans.set_index("study_uid")
    datasets = _read_all(dicom_dir)
    by_study: dict[str, list[pydicom.Dataset]] = {}
    for ds in datasets:
        by_study.setdefault(ds.StudyInstanceUID, []).append(ds)
    for row in planted.itertuples():
        study = by_study[row.study_uid]
        axial = [ds for ds in study if "AXIAL" in ds.ImageType and "ContrastBolusAgent" not in ds]
        if row.case == "pcr_gap":
            gap = pd.Timestamp(scans.scan_date[row.study_uid]) - pd.Timestamp(patients.pcr_positive_date[row.patient_id])
            assert gap.days > 14
        elif row.case == "motion":
            assert scans.motion_artifact[row.study_uid] == "1"
        elif row.case == "contrast_only":
            assert not axial and any("ContrastBolusAgent" in ds for ds in study)
        elif row.case == "broken_series":
            z = np.sort([float(ds.ImagePositionPatient[2]) for ds in axial])
            steps = np.diff(z)
            assert steps.max() > 1.5 * np.median(steps)
    # Only the planted motion scan is flagged.
    assert (manifest.scans.motion_artifact == "1").sum() == 1


def test_non_dicom_files_present(cohort) -> None:
    dicom_dir, _, _ = cohort
    assert (dicom_dir / "README.txt").is_file()
    assert list(dicom_dir.rglob("*.json"))
    names = [p.name for p in dicom_dir.rglob("*") if p.is_file()]
    assert any(n.endswith(".dcm") for n in names) and any("." not in n for n in names)


def test_deterministic_bytes(cohort, tmp_path: Path) -> None:
    dicom_dir, manifest_dir, _ = cohort
    synthesize(_tiny(), tmp_path / "dicom", tmp_path / "manifest", workers=1)
    assert _files(tmp_path / "dicom") == _files(dicom_dir)
    assert _files(tmp_path / "manifest") == _files(manifest_dir)
    synthesize(_tiny(seed=7, n_patients=4, scans_per_patient=(1, 1)), tmp_path / "d2", tmp_path / "m2", workers=1)
    assert set(_files(tmp_path / "d2")) != set(_files(dicom_dir))
    assert _files(tmp_path / "m2")["patients.csv"] != _files(manifest_dir)["patients.csv"]


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("intercept", [-1024.0, 0.0])
@pytest.mark.parametrize("slope", [1.0, 0.5])
@pytest.mark.parametrize("signed", [0, 1])
def test_encoding_round_trip_exact(tmp_path: Path, codec: str, intercept: float, slope: float, signed: int) -> None:
    rng = np.random.default_rng(0)
    hi = 3071.0 if slope == 1.0 else 1023.0
    volume = rng.integers(-1024, int(hi) + 1, size=(6, 40, 36)).astype(np.float64)
    if slope != 1.0:
        volume = volume + 0.5 * rng.integers(0, 2, size=volume.shape)
        volume = np.clip(volume, -1024, hi)
    volume[0, 0, 0], volume[-1, -1, -1] = -1024, hi
    names = [f"{n:x}" for n in rng.permutation(1000)[:6]]  # shuffled names, no extension
    paths = write_series(
        tmp_path,
        volume,
        (2.5, 0.7, 0.8),
        codec=codec,
        rescale_intercept=intercept,
        rescale_slope=slope,
        pixel_representation=signed,
        header=SeriesHeader(uid_entropy=f"{codec}{intercept}{slope}{signed}"),
        file_names=names,
    )
    datasets = [pydicom.dcmread(p) for p in sorted(paths, key=lambda p: p.name)]
    assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {CODECS[codec]}
    datasets.sort(key=lambda ds: -float(ds.ImagePositionPatient[2]))
    decoded = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    assert np.array_equal(decoded, volume)
    assert all(ds.PixelRepresentation == signed for ds in datasets)
    assert [float(ds.PixelSpacing[0]) for ds in datasets] == [0.7] * 6


def test_write_series_rejects_unknown_codec(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="codec: 'jpg'"):
        write_series(tmp_path, np.zeros((2, 4, 4)), (1.0, 1.0, 1.0), codec="jpg")

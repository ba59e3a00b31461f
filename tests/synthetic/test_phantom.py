"""Tests of the SYNTHETIC chest phantom (covidnet.synthetic.phantom): anatomy and findings drawn in HU."""

from __future__ import annotations

import numpy as np
import pytest

from covidnet.synthetic import phantom
from covidnet.synthetic.anatomy import (
    AIR_HU,
    BLOOD_CONTRAST_HU,
    FAT_HU,
    SOFT_HU,
    Anatomy,
    covid_findings,
    other_pneumonia_findings,
    random_anatomy,
)

SHAPE = (40, 64, 64)
SPACING = (6.0, 5.5, 5.5)


@pytest.fixture(scope="module")
def anatomy() -> Anatomy:
    return random_anatomy(np.random.default_rng(7), 240.0)


@pytest.fixture(scope="module")
def clean(anatomy: Anatomy) -> np.ndarray:
    return phantom.draw_chest(SHAPE, SPACING, anatomy)


def test_shape_dtype_and_whole_hu(clean: np.ndarray) -> None:
    assert clean.shape == SHAPE
    assert clean.dtype == np.float32
    assert np.array_equal(clean, np.rint(clean))
    assert clean.min() >= -1024 and clean.max() <= 3071


def test_tissue_classes_present(clean: np.ndarray) -> None:
    mid = clean[SHAPE[0] // 2]
    assert (mid == AIR_HU).mean() > 0.1  # air around the body
    assert ((mid > -950) & (mid < -700)).mean() > 0.1  # aerated lung
    assert (mid == FAT_HU).any() and (mid == SOFT_HU).any()
    assert (mid >= 200).any()  # spine, ribs, table


def test_geometry_in_mm_is_spacing_independent(anatomy: Anatomy) -> None:
    coarse = phantom.draw_chest((24, 48, 48), (10.0, 7.5, 7.5), anatomy)
    fine = phantom.draw_chest((60, 120, 120), (4.0, 3.0, 3.0), anatomy)

    def lung_ml(vol: np.ndarray, spacing: tuple[float, float, float]) -> float:
        return float(((vol > -950) & (vol < -700)).sum() * np.prod(spacing) / 1000.0)

    a, b = lung_ml(coarse, (10.0, 7.5, 7.5)), lung_ml(fine, (4.0, 3.0, 3.0))
    assert a > 1000 and b > 1000
    assert abs(a - b) / b < 0.15


def test_lung_size_varies_per_patient() -> None:
    vols = []
    for seed in (1, 2, 3):
        a = random_anatomy(np.random.default_rng(seed), 240.0)
        v = phantom.draw_chest(SHAPE, SPACING, a)
        vols.append(int(((v > -950) & (v < -700)).sum()))
    assert len(set(vols)) == 3


def _region(anatomy: Anatomy, clean: np.ndarray) -> np.ndarray:
    """Peripheral, lower, posterior lung voxels of the clean phantom."""
    d, h, w = SHAPE
    u = np.arange(d)[:, None, None] * SPACING[0]
    y = ((np.arange(h) - (h - 1) / 2) * SPACING[1])[None, :, None]
    x = ((np.arange(w) - (w - 1) / 2) * SPACING[2])[None, None, :]
    lung = (clean > -950) & (clean < -700)
    lower = u > anatomy.apex_mm + 0.5 * (anatomy.base_mm - anatomy.apex_mm)
    posterior = y > anatomy.lung_centre(1)[0]
    peripheral = np.abs(x) > 0.5 * anatomy.body_a_mm
    return lung & lower & posterior & peripheral


def test_covid_finding_raises_peripheral_lower_posterior_attenuation(anatomy: Anatomy, clean: np.ndarray) -> None:
    findings = covid_findings(np.random.default_rng(3), anatomy, consolidation=True, severity=1.0)
    sick = phantom.draw_chest(SHAPE, SPACING, anatomy, findings)
    region = _region(anatomy, clean)
    assert region.sum() > 50
    assert sick[region].mean() > clean[region].mean() + 20.0
    # Soft tissue outside the lungs is untouched.
    body = (clean > -200) & (clean < 100)
    assert np.abs(sick[body] - clean[body]).mean() < 5.0


@pytest.mark.parametrize("pattern", ["lobar", "peribronchial", "diffuse"])
def test_other_pneumonias_raise_lung_attenuation(anatomy: Anatomy, clean: np.ndarray, pattern: str) -> None:
    findings = other_pneumonia_findings(np.random.default_rng(4), anatomy, pattern=pattern, effusion=True)
    sick = phantom.draw_chest(SHAPE, SPACING, anatomy, findings)
    lung = (clean > -950) & (clean < -700)
    assert sick[lung].mean() > clean[lung].mean() + 10.0


def test_contrast_enhances_heart_and_vessels(anatomy: Anatomy, clean: np.ndarray) -> None:
    enhanced = phantom.draw_chest(SHAPE, SPACING, anatomy, contrast=True)
    assert (enhanced == BLOOD_CONTRAST_HU).sum() > 100
    assert (clean == BLOOD_CONTRAST_HU).sum() == 0


def test_motion_artefact_visible_in_pixels(anatomy: Anatomy, clean: np.ndarray) -> None:
    moved = phantom.draw_chest(SHAPE, SPACING, anatomy, motion_mm=15.0, rng=np.random.default_rng(0))
    # Misregistered neighbours: slice-to-slice differences grow well beyond the clean scan's.
    step_clean = np.abs(np.diff(clean, axis=0)).mean()
    step_moved = np.abs(np.diff(moved, axis=0)).mean()
    assert step_moved > 1.3 * step_clean


def test_noise_needs_rng_and_is_seeded(anatomy: Anatomy) -> None:
    with pytest.raises(ValueError, match="rng"):
        phantom.draw_chest(SHAPE, SPACING, anatomy, noise_hu=10.0)
    a = phantom.draw_chest(SHAPE, SPACING, anatomy, noise_hu=10.0, rng=np.random.default_rng(1))
    b = phantom.draw_chest(SHAPE, SPACING, anatomy, noise_hu=10.0, rng=np.random.default_rng(1))
    assert np.array_equal(a, b)


def test_projection_shape(anatomy: Anatomy) -> None:
    img = phantom.draw_projection(anatomy, [], size=(60, 90), spacing_mm=(4.0, 4.0))
    assert img.shape == (60, 90)
    assert img.std() > 50


def test_covid_findings_stay_visible_after_downsampling(anatomy: Anatomy, clean: np.ndarray) -> None:
    """Several 2-5 cm GGO patches per lung: large and dense enough to survive a 32 x 96 x 96 resize."""
    findings = covid_findings(np.random.default_rng(5), anatomy, consolidation=False, severity=0.5)
    assert len(findings) >= 4
    assert all(-600.0 <= f.hu <= -400.0 for f in findings)
    assert all(2.0 * min(f.radii) >= 15.0 for f in findings)
    sick = phantom.draw_chest(SHAPE, SPACING, anatomy, findings)
    lung = (clean > -950) & (clean < -700)
    raised = lung & (sick - clean > 150.0)
    voxel_ml = float(np.prod(SPACING)) / 1000.0
    x = (np.arange(SHAPE[2]) - (SHAPE[2] - 1) / 2) * SPACING[2]
    for side in (x < 0, x > 0):  # bilateral
        assert raised[:, :, side].sum() * voxel_ml > 30.0

"""Tests of the SYNTHETIC anatomy and its findings (covidnet.synthetic.anatomy), without drawing pixels."""

from __future__ import annotations

import numpy as np
import pytest

from covidnet.synthetic.anatomy import Anatomy, other_pneumonia_findings, random_anatomy


@pytest.fixture(scope="module")
def anatomy() -> Anatomy:
    return random_anatomy(np.random.default_rng(7), 240.0)


def test_unknown_pattern_rejected(anatomy: Anatomy) -> None:
    with pytest.raises(ValueError, match="pattern: 'viral'"):
        other_pneumonia_findings(np.random.default_rng(0), anatomy, pattern="viral", effusion=False)


def test_same_seed_same_anatomy() -> None:
    """The cohort is byte-identical per seed only if the anatomy is."""
    a, b = (random_anatomy(np.random.default_rng(11), 240.0) for _ in range(2))
    c = random_anatomy(np.random.default_rng(12), 240.0)
    assert a.body_a_mm == b.body_a_mm and a.lattice_origin == b.lattice_origin
    for name in ("vessels", "texture", "patches"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.body_a_mm != c.body_a_mm
    assert a.vessels.ndim == 2 and a.vessels.shape[1] == 8 and len(a.vessels) > 0

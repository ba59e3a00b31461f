"""SYNTHETIC chest anatomy and lung findings, in mm and Hounsfield units (HU).

Everything in this module is synthetic: one patient's chest is an :class:`Anatomy` of
ellipses, tubes and smooth noise lattices (body wall, lungs with branching vessels,
mediastinum, heart, spine, ribs, a CT table), and pneumonia-like findings (:class:`Finding`)
are placed into its lungs. :mod:`covidnet.synthetic.phantom` rasterises both into volumes. It
is not a model of any real patient and nothing learned on it says anything about real
patients.

Coordinates are in mm so that any pixel spacing or slice thickness shows the same anatomy:

* ``x``: patient right -> left (DICOM +x), 0 at the centre of the field of view;
* ``y``: anterior -> posterior (DICOM +y), 0 at the centre of the field of view;
* ``u``: depth below the top of the scan, cranio-caudal (``u = z_top - z`` in DICOM terms).

Tissue attenuations are the HU constants below. Findings:

* COVID-19-like (:func:`covid_findings`): bilateral, peripheral, subpleural ground-glass
  opacities (GGO, -600..-400 HU, 2-5 cm patches, several per lung) with lower-lobe and
  posterior predominance, some consolidating (-50..+40 HU);
* other pneumonias (:func:`other_pneumonia_findings`): lobar consolidation with air
  bronchograms, central peribronchial opacities, diffuse GGO (the confounder), dependent
  pleural effusions (~10 HU).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Tissue attenuations (HU), and the range of values a CT image holds (HU_MIN..HU_MAX).
AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_HU = 40.0
LUNG_HU = -850.0
BLOOD_CONTRAST_HU = 250.0
HU_MIN = -1024.0
HU_MAX = 3071.0

#: Steps (mm) of the two noise lattices of an :class:`Anatomy`: ``texture`` and ``patches``.
LATTICE_COARSE_MM = 12.0
LATTICE_FINE_MM = 5.0


@dataclass(frozen=True, eq=False)
class Anatomy:
    """One synthetic patient's chest, all lengths in mm.

    Attributes:
        chest_mm: cranio-caudal extent the lungs are planned into (apex to base).
        body_a_mm, body_b_mm: body ellipse semi-axes (left-right, antero-posterior).
        body_y_mm: body centre on the antero-posterior axis.
        fat_mm: subcutaneous fat thickness.
        lung_scale: lung size relative to the body.
        apex_mm, base_mm: lung apex depth and deepest costophrenic recess depth (``u``).
        dome_mm: height of the diaphragm domes above the recesses.
        table_gap_mm: air gap between the back and the CT table.
        vessels: ``(N, 8)`` segments ``u0, y0, x0, u1, y1, x1, r0, r1`` (mm).
        texture: ``(Lu, Ly, Lx)`` coarse noise lattice (unit variance) for lung texture.
        patches: ``(Lu, Ly, Lx)`` fine noise lattice for patchy findings.
        lattice_origin: ``(u, y, x)`` mm of lattice index 0 (shared by both lattices).
    """

    chest_mm: float
    body_a_mm: float
    body_b_mm: float
    body_y_mm: float
    fat_mm: float
    lung_scale: float
    apex_mm: float
    base_mm: float
    dome_mm: float
    table_gap_mm: float
    vessels: np.ndarray
    texture: np.ndarray
    patches: np.ndarray
    lattice_origin: tuple[float, float, float]

    # Derived geometry (mm), shared by drawing and finding placement.
    def lung_centre(self, side: int) -> tuple[float, float]:
        """In-plane ``(y, x)`` centre of the right (``side=-1``) or left (``+1``) lung."""
        return self.body_y_mm + 0.06 * self.body_b_mm, side * 0.47 * self.body_a_mm

    def lung_axes(self) -> tuple[float, float]:
        """Lung in-plane semi-axes ``(y, x)`` at full width (mm)."""
        return 0.70 * self.body_b_mm * self.lung_scale, 0.36 * self.body_a_mm * self.lung_scale

    def lung_width(self, u: np.ndarray | float) -> np.ndarray:
        """Relative lung width at depth ``u`` (0 above the apex, 1 from mid chest down)."""
        taper = np.clip((np.asarray(u, dtype=np.float32) - self.apex_mm) / (0.35 * self.chest_mm), 0.0, 1.0)
        return np.sqrt(taper).astype(np.float32)


@dataclass(frozen=True)
class Finding:
    """One finding drawn into the lungs.

    Attributes:
        kind: ``blob`` (ellipsoidal opacity), ``diffuse`` (patchy GGO through both lungs),
            ``lobar`` (one lobe consolidated, air bronchograms), ``effusion`` (dependent
            pleural fluid).
        hu: target attenuation (HU).
        centre: ``(u, y, x)`` mm for a blob.
        radii: ``(u, y, x)`` mm semi-axes of a blob.
        side: -1 right lung, +1 left lung (lobar, effusion).
        lobe: ``lower`` or ``upper`` (lobar).
        extent: strength in [0, 1] (diffuse, lobar) or fluid depth in mm (effusion).
    """

    kind: str
    hu: float
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radii: tuple[float, float, float] = (1.0, 1.0, 1.0)
    side: int = 1
    lobe: str = "lower"
    extent: float = 1.0


def random_anatomy(rng: np.random.Generator, chest_mm: float) -> Anatomy:
    """Draw one patient's anatomy.

    Args:
        rng: the patient's random stream.
        chest_mm: cranio-caudal scan coverage (mm); the lungs are planned into it like a
            technologist plans a chest scan (apex just below the top, recesses above the
            bottom).
    """
    a = float(rng.uniform(135.0, 170.0))
    b = float(rng.uniform(95.0, 120.0))
    body_y = float(rng.uniform(-22.0, -8.0))
    apex = float(chest_mm * rng.uniform(0.03, 0.08))
    base = float(chest_mm * rng.uniform(0.90, 0.96))
    anatomy = Anatomy(
        chest_mm=float(chest_mm),
        body_a_mm=a,
        body_b_mm=b,
        body_y_mm=body_y,
        fat_mm=float(rng.uniform(6.0, 24.0)),
        lung_scale=float(rng.uniform(0.88, 1.08)),
        apex_mm=apex,
        base_mm=base,
        dome_mm=float((base - apex) * rng.uniform(0.22, 0.32)),
        table_gap_mm=float(rng.uniform(4.0, 14.0)),
        vessels=np.zeros((0, 8), np.float32),
        texture=np.zeros((1, 1, 1), np.float32),
        patches=np.zeros((1, 1, 1), np.float32),
        lattice_origin=(-40.0, -220.0, -220.0),
    )
    origin = anatomy.lattice_origin
    extent = (chest_mm + 80.0, 440.0, 440.0)
    texture = _lattice(rng, extent, LATTICE_COARSE_MM)
    patches = _lattice(rng, extent, LATTICE_FINE_MM)
    vessels = np.concatenate([_vessel_tree(rng, anatomy, side) for side in (-1, 1)])
    return dataclasses.replace(anatomy, vessels=vessels, texture=texture, patches=patches, lattice_origin=origin)


def _lattice(rng: np.random.Generator, extent: Sequence[float], step: float) -> np.ndarray:
    shape = tuple(int(math.ceil(e / step)) + 2 for e in extent)
    raw = rng.standard_normal(shape).astype(np.float32)
    # One 3-tap box pass per axis: smoother than white noise, still unit-ish variance.
    for axis in range(3):
        raw = (np.roll(raw, 1, axis) + raw + np.roll(raw, -1, axis)) / np.float32(math.sqrt(3.0))
    return raw


def _vessel_tree(rng: np.random.Generator, anatomy: Anatomy, side: int) -> np.ndarray:
    """Branching tubes from the hilum, thinning towards the periphery: ``(N, 8)``."""
    yc, xc = anatomy.lung_centre(side)
    ay, ax = anatomy.lung_axes()
    hilum = np.array([0.45 * anatomy.chest_mm, yc - 0.05 * ay, xc - side * 0.45 * ax])
    trunks = [(-1.0, 0.1, 0.3 * side), (1.0, 0.2, 0.2 * side), (0.1, -0.5, 0.9 * side), (0.6, 0.8, 0.3 * side)]
    segments: list[tuple[float, ...]] = []
    length0 = 0.22 * (anatomy.base_mm - anatomy.apex_mm)

    def inside(p: np.ndarray) -> bool:
        w = max(float(anatomy.lung_width(p[0])), 1e-3)
        q_full = ((p[1] - yc) / ay) ** 2 + ((p[2] - xc) / ax) ** 2
        dome = anatomy.base_mm - anatomy.dome_mm * max(0.0, 1.0 - q_full)
        return q_full / w**2 < 0.92 and anatomy.apex_mm + 4.0 < p[0] < dome - 4.0

    def grow(start: np.ndarray, direction: np.ndarray, length: float, radius: float, depth: int) -> None:
        direction = direction / np.linalg.norm(direction)
        end = start + direction * length
        for _ in range(4):  # shorten a branch that would leave the lung
            if inside(end):
                break
            length *= 0.6
            end = start + direction * length
        else:
            return
        segments.append((*start, *end, radius, radius * 0.85))
        if depth == 0:
            return
        for _ in range(2):
            turn = rng.normal(0.0, 0.6, 3)
            grow(end, direction + turn, length * 0.75, radius * 0.7, depth - 1)

    for trunk in trunks:
        grow(hilum.copy(), np.array(trunk, dtype=float) + rng.normal(0.0, 0.15, 3), length0, 6.0, 5)
    return np.asarray(segments, dtype=np.float32)


def covid_findings(rng: np.random.Generator, anatomy: Anatomy, *, consolidation: bool, severity: float = 1.0) -> list[Finding]:
    """COVID-19-like findings: bilateral peripheral subpleural GGO, lower/posterior predominance.

    Each lung gets several (3-8 at full severity) ground-glass patches of 2-5 cm
    (-600..-400 HU) whose centres lie just inside the pleura, so that every patch hugs the
    chest wall (the lung mask clips its outer part). They are large enough to stay clearly
    visible after the default preprocessing (32 x 96 x 96 voxels of ~3 mm in-plane).

    Args:
        rng: random stream.
        anatomy: the patient's anatomy (findings are placed relative to its lungs).
        consolidation: whether some of the opacities have a consolidated core (-50..+40 HU).
        severity: in (0, 1]; scales the number and size of the opacities.
    """
    findings: list[Finding] = []
    for side in (-1, 1):  # bilateral
        n = max(2, int(round(rng.uniform(3.0, 8.0) * (0.55 + 0.45 * severity))))
        for _ in range(n):
            # Lower-lobe predominance: depth fraction skewed towards the base.
            frac = float(np.clip(rng.beta(3.0, 1.5), 0.2, 0.95))
            # Peripheral, posterior-lateral predominance (angle 0 = +x, +pi/2 = posterior):
            # left lung posterolateral is pi/4, right 3pi/4.
            angle = float(rng.normal(math.pi / 4 if side > 0 else 3 * math.pi / 4, 0.6))
            centre = _lung_point(anatomy, side, frac, rho=float(rng.uniform(0.68, 0.9)), angle=angle)
            r = float(rng.uniform(12.0, 25.0) * (0.85 + 0.15 * severity))  # semi-axis: 2-5 cm patches
            radii = (r * rng.uniform(1.0, 1.5), r * rng.uniform(0.8, 1.1), r * rng.uniform(0.8, 1.1))
            findings.append(Finding("blob", float(rng.uniform(-600.0, -400.0)), centre, radii))
            if consolidation and rng.random() < 0.5:
                core = tuple(0.55 * q for q in radii)
                findings.append(Finding("blob", float(rng.uniform(-50.0, 40.0)), centre, core))
    return findings


def other_pneumonia_findings(
    rng: np.random.Generator, anatomy: Anatomy, *, pattern: str, effusion: bool, severity: float = 1.0
) -> list[Finding]:
    """Findings of other pneumonias.

    Args:
        rng: random stream.
        anatomy: the patient's anatomy.
        pattern: ``lobar`` (bacterial lobar consolidation), ``peribronchial`` (central
            opacities along the airways, viral/atypical) or ``diffuse`` (diffuse GGO).
        effusion: add a dependent pleural effusion.
        severity: in (0, 1].
    """
    findings: list[Finding] = []
    side = int(rng.choice([-1, 1]))
    if pattern == "lobar":
        lobe = "lower" if rng.random() < 0.65 else "upper"
        findings.append(Finding("lobar", float(rng.uniform(10.0, 45.0)), side=side, lobe=lobe, extent=float(0.6 + 0.4 * severity)))
    elif pattern == "peribronchial":
        # Small, dense nodules and cuffs along the central airways (bronchial wall
        # thickening, centrilobular nodules), clustered around the hila.
        n = max(8, int(round(rng.uniform(10, 22) * (0.5 + 0.5 * severity))))
        for i in range(n):
            s = -1 if i % 2 == 0 else 1
            centre = _lung_point(
                anatomy, s, float(rng.uniform(0.3, 0.75)), rho=float(rng.uniform(0.1, 0.5)), angle=float(rng.uniform(0, 2 * math.pi))
            )
            r = float(rng.uniform(4.0, 9.0))
            findings.append(Finding("blob", float(rng.uniform(-350.0, -100.0)), centre, (r * 1.8, r, r)))
    elif pattern == "diffuse":
        findings.append(Finding("diffuse", float(rng.uniform(-720.0, -600.0)), extent=float(0.5 + 0.5 * severity)))
    else:
        raise ValueError(f"pattern: {pattern!r} is not one of lobar, peribronchial, diffuse")
    if effusion:
        findings.append(Finding("effusion", float(rng.uniform(0.0, 20.0)), side=side, extent=float(rng.uniform(12.0, 40.0))))
    return findings


def _lung_point(anatomy: Anatomy, side: int, frac: float, *, rho: float, angle: float) -> tuple[float, float, float]:
    """A point inside one lung: depth fraction apex->base, normalised radius, in-plane angle."""
    u = anatomy.apex_mm + frac * (anatomy.base_mm - 0.6 * anatomy.dome_mm - anatomy.apex_mm)
    yc, xc = anatomy.lung_centre(side)
    ay, ax = anatomy.lung_axes()
    w = float(anatomy.lung_width(u))
    return float(u), float(yc + rho * w * ay * math.sin(angle)), float(xc + rho * w * ax * math.cos(angle))


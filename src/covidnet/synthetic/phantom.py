"""Rasterise a SYNTHETIC chest into CT volumes and scout images, in HU, with plain numpy.

Everything in this module is synthetic: :func:`draw_chest` draws the
:class:`~covidnet.synthetic.anatomy.Anatomy` of one invented patient (air, body wall, lungs
with branching vessels, mediastinum, heart, spine, ribs, a CT table) and its lung findings
(:mod:`covidnet.synthetic.anatomy`) into an axial CT, optionally with iodinated contrast, a
breathing artefact and Gaussian noise; :func:`draw_projection` draws a localizer (scout)
image from the same anatomy. It is not a model of any real patient and nothing learned on it
says anything about real patients.

Anatomy and findings are in mm (axes ``u``, ``y``, ``x`` of :mod:`covidnet.synthetic.anatomy`),
so that any pixel spacing or slice thickness shows the same anatomy. Volumes are
``(D, H, W)`` = (axial slices top to bottom, rows anterior to posterior, columns right to
left) ``float32`` arrays of whole HU in [-1024, 3071], drawn in slabs of about
``2**21`` voxels to keep temporaries small.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from covidnet.synthetic.anatomy import (
    AIR_HU,
    BLOOD_CONTRAST_HU,
    FAT_HU,
    HU_MAX,
    HU_MIN,
    LATTICE_COARSE_MM,
    LATTICE_FINE_MM,
    LUNG_HU,
    SOFT_HU,
    Anatomy,
    Finding,
)

_SLAB_VOXELS = 1 << 21  # voxels drawn at once (keeps temporaries in cache)

#: The ground-truth label of a voxel (:func:`draw_chest` with ``labels=True``): outside the lungs,
#: aerated lung, a lesion (a finding occupying at least :data:`LESION_OCCUPANCY` of the voxel).
OUTSIDE, LUNG, LESION = 0, 1, 2
LESION_OCCUPANCY = 0.5


def _axis(n: int, step: float) -> np.ndarray:
    return ((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * np.float32(step)).astype(np.float32)


def _interp_axis(values: np.ndarray, coords: np.ndarray, origin: float, step: float, axis: int) -> np.ndarray:
    pos = np.clip((coords - origin) / step, 0.0, values.shape[axis] - 1.001)
    i0 = pos.astype(np.int64)
    w = (pos - i0).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = -1
    w = w.reshape(shape)
    return np.take(values, i0, axis=axis) * (1 - w) + np.take(values, i0 + 1, axis=axis) * w


def _sample(lattice: np.ndarray, step: float, origin: tuple[float, float, float], u, y, x) -> np.ndarray:
    """Trilinear sample of a lattice on the separable grid ``u`` x ``y`` x ``x`` (mm)."""
    out = _interp_axis(lattice, u, origin[0], step, 0)
    out = _interp_axis(out, y, origin[1], step, 1)
    return _interp_axis(out, x, origin[2], step, 2)


def _base_slice(anatomy: Anatomy, y: np.ndarray, x: np.ndarray, contrast: bool) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The z-invariant part of an axial slice ``(H, W)``: body wall, spine, aorta, table."""
    yy, xx = y[:, None], x[None, :]
    a, b, by0 = anatomy.body_a_mm, anatomy.body_b_mm, anatomy.body_y_mm
    rho_body = np.sqrt((xx / a) ** 2 + ((yy - by0) / b) ** 2)
    depth = (1.0 - rho_body) * min(a, b)  # approximate distance below the skin (mm)
    img = np.full(rho_body.shape, AIR_HU, np.float32)
    body = rho_body < 1.0
    img[body] = FAT_HU
    img[body & (depth > anatomy.fat_mm)] = SOFT_HU
    # Spine: vertebral body (cortical shell, cancellous core), canal, posterior arch.
    vy, vr = by0 + 0.60 * b, 0.15 * b
    rv = np.sqrt(xx**2 + (yy - vy) ** 2)
    img[rv < vr] = 400.0
    img[rv < vr - 2.5] = 200.0
    cy = vy + vr + 9.0
    rc = np.sqrt(xx**2 + (yy - cy) ** 2)
    img[(rc < 13.0) & (rc >= 8.0)] = 350.0
    img[rc < 8.0] = 10.0
    # Descending aorta, left-anterior of the spine.
    ra = np.sqrt((xx - 0.14 * a) ** 2 + (yy - (vy - vr - 6.0)) ** 2)
    img[ra < 12.0] = BLOOD_CONTRAST_HU if contrast else SOFT_HU
    # CT table: a thin curved slab below the back, air gap between.
    back = by0 + b
    table_y = back + anatomy.table_gap_mm + 0.0015 * xx**2
    table = (yy >= table_y) & (yy < table_y + 6.0) & (np.abs(xx) < 210.0)
    img[table] = 200.0
    masks = {
        "body": body,
        "rib_belt": body & (depth > anatomy.fat_mm + 4.0) & (depth < anatomy.fat_mm + 12.0),
        "vertebra": rv < vr,
        "mediastinum": ((xx / (0.20 * a)) ** 2 + ((yy - by0 + 0.05 * b) / (0.62 * b)) ** 2) < 1.0,
    }
    return img, masks


def _draw_slab(
    anatomy: Anatomy,
    findings: Sequence[Finding],
    u: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    base: np.ndarray,
    masks: dict[str, np.ndarray],
    contrast: bool,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """Draw slices at depths ``u`` (any order) on the in-plane grid: ``(len(u), H, W)`` HU.

    With ``labels`` (a ``(len(u), H, W)`` uint8 array), also write the ground truth there:
    :data:`OUTSIDE` outside the lungs, :data:`LUNG` for lung, :data:`LESION` where a finding
    occupies at least half of a lung voxel (:data:`LESION_OCCUPANCY`).
    """
    d = len(u)
    vol = np.broadcast_to(base, (d, *base.shape)).copy()
    uu = u[:, None, None]
    yy = y[None, :, None]
    xx = x[None, None, :]
    ay, ax = anatomy.lung_axes()
    width = anatomy.lung_width(u)[:, None, None]
    lung = np.zeros(vol.shape, bool)
    rho2 = np.zeros(vol.shape, np.float32)
    for side in (-1, 1):
        yc, xc = anatomy.lung_centre(side)
        q_full = ((yy - yc) / ay) ** 2 + ((xx - xc) / ax) ** 2  # (1, H, W)
        dome = anatomy.base_mm - anatomy.dome_mm * np.clip(1.0 - q_full, 0.0, 1.0) - (8.0 if side < 0 else 0.0)
        q = q_full / np.maximum(width, 1e-3) ** 2
        inside = (q < 1.0) & (uu < dome) & (uu > anatomy.apex_mm)
        lung |= inside
        rho2 = np.where(inside, q, rho2)
    lung &= ~masks["mediastinum"][None]
    # Heart: an ellipsoid in the lower anterior mediastinum, displacing the left lung.
    hu0, hy0, hx0 = 0.70 * anatomy.chest_mm, anatomy.body_y_mm - 0.22 * anatomy.body_b_mm, 0.12 * anatomy.body_a_mm
    heart = (((uu - hu0) / (0.24 * anatomy.chest_mm)) ** 2 + ((yy - hy0) / (0.42 * anatomy.body_b_mm)) ** 2 + ((xx - hx0) / (0.32 * anatomy.body_a_mm)) ** 2) < 1.0
    lung &= ~heart
    # Ribs: oblique bands in the chest wall.
    phase = np.sin(2.0 * np.pi * (uu + 0.25 * (yy - anatomy.body_y_mm)) / 24.0)
    ribs = masks["rib_belt"][None] & (phase > 0.55) & (uu > anatomy.apex_mm - 10.0) & (uu < anatomy.base_mm)
    vol[ribs] = 450.0
    # Intervertebral discs.
    disc = (np.mod(u, 27.0) < 5.0)[:, None, None] & masks["vertebra"][None]
    vol[disc] = 80.0
    vol[heart & ~ribs] = BLOOD_CONTRAST_HU if contrast else SOFT_HU

    lesion = np.zeros(vol.shape, bool) if labels is not None else None
    if lung.any():
        origin = anatomy.lattice_origin
        texture = _sample(anatomy.texture, LATTICE_COARSE_MM, origin, u, y, x)
        gravity = (yy - anatomy.body_y_mm) / anatomy.body_b_mm  # posterior (dependent) is denser
        parenchyma = LUNG_HU + 18.0 * texture + 35.0 * gravity
        vessels = _rasterize_vessels(anatomy.vessels, u, y, x)
        patches = None
        blobs = [f for f in findings if f.kind == "blob"]
        if blobs or any(f.kind in ("diffuse", "lobar") for f in findings):
            patches = _sample(anatomy.patches, LATTICE_FINE_MM, origin, u, y, x)
        for f in findings:
            if f.kind == "diffuse":
                occ = np.clip(0.55 * f.extent + 0.45 * patches, 0.0, 1.0)
                parenchyma = parenchyma + occ * np.maximum(f.hu - parenchyma, 0.0)
                if lesion is not None:
                    lesion |= occ >= LESION_OCCUPANCY
        if blobs:
            occ = _rasterize_blobs(blobs, u, y, x, patches)
            for hu, o in occ:
                parenchyma = parenchyma + o * np.maximum(hu - parenchyma, 0.0)
                if lesion is not None:
                    lesion |= o >= LESION_OCCUPANCY
        vessel_hu = BLOOD_CONTRAST_HU if contrast else SOFT_HU
        parenchyma = parenchyma * (1.0 - vessels) + vessel_hu * vessels
        for f in findings:
            if f.kind == "lobar":
                yc, xc = anatomy.lung_centre(f.side)
                # Oblique fissure: the lower lobe is posterior and caudal.
                fissure = 0.50 * anatomy.chest_mm - 0.9 * (yy - yc)
                lobe = (uu > fissure) if f.lobe == "lower" else (uu <= fissure)
                region = lobe & (np.sign(xx) == f.side)
                occ = np.clip(f.extent + 0.3 * patches, 0.0, 1.0) * region
                if lesion is not None:
                    lesion |= occ >= LESION_OCCUPANCY
                consolidated = f.hu + 8.0 * patches
                air_bronchogram = -900.0 * vessels + consolidated * (1.0 - vessels)
                parenchyma = parenchyma * (1.0 - occ) + air_bronchogram * occ
            elif f.kind == "effusion":
                yc, xc = anatomy.lung_centre(f.side)
                back = yc + ay * width
                taper = np.clip((uu - 0.45 * anatomy.chest_mm) / (0.45 * anatomy.chest_mm), 0.0, 1.0)
                fluid = (yy > back - f.extent * taper) & (np.sign(xx) == f.side) & (taper > 0)
                parenchyma = np.where(fluid, f.hu, parenchyma)
                if lesion is not None:
                    lesion |= fluid
        vol = np.where(lung, parenchyma, vol)
    if labels is not None:
        labels[...] = np.where(lung, np.where(lesion, LESION, LUNG), OUTSIDE)
    return vol.astype(np.float32, copy=False)


def _slices_for(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.nonzero((u >= lo) & (u <= hi))[0]


def _index_range(coords: np.ndarray, lo: float, hi: float) -> slice:
    step = float(coords[1] - coords[0]) if len(coords) > 1 else 1.0
    start = int(max(0, math.floor((lo - coords[0]) / step)))
    stop = int(min(len(coords), math.ceil((hi - coords[0]) / step) + 1))
    return slice(start, max(start, stop))


def _rasterize_vessels(segments: np.ndarray, u: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Partial-volume occupancy in [0, 1] of the vessel tubes: ``(len(u), H, W)``."""
    occ = np.zeros((len(u), len(y), len(x)), np.float32)
    if len(segments) == 0:
        return occ
    step = min(abs(float(y[1] - y[0])) if len(y) > 1 else 1.0, abs(float(x[1] - x[0])) if len(x) > 1 else 1.0)
    r = np.maximum(segments[:, 6], segments[:, 7])
    lo = np.minimum(segments[:, 0:3], segments[:, 3:6]) - r[:, None]
    hi = np.maximum(segments[:, 0:3], segments[:, 3:6]) + r[:, None]
    keep = (hi[:, 0] >= u.min()) & (lo[:, 0] <= u.max())
    for seg, l, h in zip(segments[keep], lo[keep], hi[keep], strict=True):
        ks = _slices_for(u, l[0], h[0])
        sy = _index_range(y, l[1], h[1])
        sx = _index_range(x, l[2], h[2])
        if len(ks) == 0 or sy.stop <= sy.start or sx.stop <= sx.start:
            continue
        pu = u[ks][:, None, None] - seg[0]
        py = y[sy][None, :, None] - seg[1]
        px = x[sx][None, None, :] - seg[2]
        du, dy, dx = seg[3] - seg[0], seg[4] - seg[1], seg[5] - seg[2]
        length2 = max(du * du + dy * dy + dx * dx, 1e-6)
        t = np.clip((pu * du + py * dy + px * dx) / length2, 0.0, 1.0)
        dist = np.sqrt((pu - t * du) ** 2 + (py - t * dy) ** 2 + (px - t * dx) ** 2)
        radius = seg[6] + t * (seg[7] - seg[6])
        o = np.clip((radius - dist) / step + 0.5, 0.0, 1.0)
        block = occ[ks, sy, sx]
        occ[ks, sy, sx] = np.maximum(block, o)
    return occ


def _rasterize_blobs(
    blobs: Sequence[Finding], u: np.ndarray, y: np.ndarray, x: np.ndarray, patches: np.ndarray
) -> list[tuple[float, np.ndarray]]:
    """Soft, patchy ellipsoids: one ``(hu, occupancy (len(u), H, W))`` per blob hitting the slab."""
    out = []
    for f in blobs:
        (cu, cy, cx), (ru, ry, rx) = f.centre, f.radii
        ks = _slices_for(u, cu - ru, cu + ru)
        sy = _index_range(y, cy - ry, cy + ry)
        sx = _index_range(x, cx - rx, cx + rx)
        if len(ks) == 0 or sy.stop <= sy.start or sx.stop <= sx.start:
            continue
        q = ((u[ks][:, None, None] - cu) / ru) ** 2 + ((y[sy][None, :, None] - cy) / ry) ** 2 + ((x[sx][None, None, :] - cx) / rx) ** 2
        local = np.clip((1.0 - q) * 4.0, 0.0, 1.0) * np.clip(0.9 + 0.3 * patches[ks, sy, sx], 0.0, 1.0)
        occ = np.zeros((len(u), len(y), len(x)), np.float32)
        occ[ks, sy, sx] = local
        out.append((f.hu, occ))
    return out


def breathing_shifts(n_slices: int, amplitude_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Per-slice cranio-caudal displacement (mm) of a patient breathing during the scan: ``(D,)``.

    Slices are acquired one after the other; a breath takes several slices, so
    neighbouring slices sample the anatomy at different breathing phases.
    """
    period = rng.uniform(5.0, 9.0)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    k = np.arange(n_slices, dtype=np.float32)
    return (amplitude_mm * np.sin(2.0 * math.pi * k / period + phase)).astype(np.float32)


def _streaks(shape_hw: tuple[int, int], y: np.ndarray, x: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """Motion streaks through one slice: a few bright/dark lines ``(H, W)`` in HU."""
    yy, xx = y[:, None], x[None, :]
    out = np.zeros(shape_hw, np.float32)
    for _ in range(int(rng.integers(3, 7))):
        theta = rng.uniform(0.0, math.pi)
        py, px = rng.uniform(-60.0, 60.0, 2)
        dist = (yy - py) * math.cos(theta) - (xx - px) * math.sin(theta)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        out += sign * amplitude * np.exp(-(dist**2) / 4.0)
    return out


def draw_chest(
    shape: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    anatomy: Anatomy,
    findings: Sequence[Finding] = (),
    *,
    contrast: bool = False,
    u_start_mm: float = 0.0,
    motion_mm: float = 0.0,
    noise_hu: float = 0.0,
    rng: np.random.Generator | None = None,
    labels: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Draw one axial chest CT.

    Args:
        shape: ``(D, H, W)`` voxels.
        spacing_mm: ``(slice step, row spacing, column spacing)`` in mm.
        anatomy: the patient (see :func:`random_anatomy`).
        findings: lung findings (see :func:`covid_findings`, :func:`other_pneumonia_findings`).
        contrast: iodinated contrast: heart, aorta and vessels enhance to ~+250 HU.
        u_start_mm: depth (mm below the planned top) of the first slice centre.
        motion_mm: amplitude of a breathing artefact (0: none). Slices are misregistered
            along z, half of them are doubled (two breathing phases averaged) and streaked.
        noise_hu: standard deviation of Gaussian noise (HU).
        rng: stream for noise and motion (required when either is used).
        labels: also return the ground truth of each voxel (:data:`OUTSIDE`, :data:`LUNG`,
            :data:`LESION`), drawn with the volume (a motion ghost does not move it).

    Returns:
        ``(D, H, W)`` float32 HU, whole numbers clipped to [-1024, 3071]; with ``labels``,
        ``(volume, labels)``, labels ``(D, H, W)`` uint8.
    """
    d, h, w = shape
    dz, dy, dx = spacing_mm
    if (noise_hu > 0 or motion_mm > 0) and rng is None:
        raise ValueError("rng: required when noise_hu or motion_mm is set")
    u = (u_start_mm + np.arange(d, dtype=np.float32) * np.float32(dz)).astype(np.float32)
    y, x = _axis(h, dy), _axis(w, dx)
    base, masks = _base_slice(anatomy, y, x, contrast)
    ghost = np.zeros(d, bool)
    if motion_mm > 0:
        assert rng is not None
        shifts = breathing_shifts(d, motion_mm, rng)
        u = u + shifts
        ghost = rng.random(d) < 0.5
        ghost_u = u + np.float32(motion_mm) * rng.choice([-1.0, 1.0], d).astype(np.float32)
    vol = np.empty(shape, np.float32)
    truth = np.zeros(shape, np.uint8) if labels else None
    slab = max(1, _SLAB_VOXELS // (h * w))
    for start in range(0, d, slab):
        stop = min(d, start + slab)
        vol[start:stop] = _draw_slab(anatomy, findings, u[start:stop], y, x, base, masks, contrast,
                                     None if truth is None else truth[start:stop])
    if motion_mm > 0:
        assert rng is not None
        idx = np.nonzero(ghost)[0]
        for start in range(0, len(idx), slab):
            ks = idx[start : start + slab]
            second = _draw_slab(anatomy, findings, ghost_u[ks], y, x, base, masks, contrast)
            vol[ks] = 0.5 * (vol[ks] + second)
        for k in idx:
            vol[k] += _streaks((h, w), y, x, rng, amplitude=float(rng.uniform(120.0, 300.0))) * masks["body"]
    if noise_hu > 0:
        assert rng is not None
        vol += rng.standard_normal(shape, dtype=np.float32) * np.float32(noise_hu)
    np.rint(vol, out=vol)
    np.clip(vol, HU_MIN, HU_MAX, out=vol)
    return vol if truth is None else (vol, truth)


def draw_projection(anatomy: Anatomy, findings: Sequence[Finding], *, size: tuple[int, int], spacing_mm: tuple[float, float], axis: str = "coronal") -> np.ndarray:
    """A scout (localizer) projection image through the chest.

    Args:
        anatomy: the patient.
        findings: lung findings (they show faintly, as on a real scout).
        size: ``(rows, columns)``; rows run cranio-caudally.
        spacing_mm: ``(row, column)`` pixel spacing (mm).
        axis: ``coronal`` (antero-posterior projection) or ``sagittal`` (lateral).

    Returns:
        ``(rows, columns)`` float32 whole numbers in [-1024, 3071], mean HU along the rays
        stretched to look like a radiograph.
    """
    rows, cols = size
    depth_n = 55  # rays sampled every 8 mm over 440 mm
    shape = (rows, depth_n, cols) if axis == "coronal" else (rows, cols, depth_n)
    spacing = (spacing_mm[0], 8.0, spacing_mm[1]) if axis == "coronal" else (spacing_mm[0], spacing_mm[1], 8.0)
    vol = draw_chest(shape, spacing, anatomy, findings, u_start_mm=-20.0)
    ray_axis = 1 if axis == "coronal" else 2
    mean = (vol - AIR_HU).mean(axis=ray_axis)
    img = AIR_HU + 4.0 * mean
    np.rint(img, out=img)
    return np.clip(img, HU_MIN, HU_MAX).astype(np.float32)

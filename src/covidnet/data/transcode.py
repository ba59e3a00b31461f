"""Lossless copies of DICOM files in another transfer syntax (for decoder tests and benchmarks).

Hospitals store CT as RLE, JPEG-LS, JPEG 2000 or JPEG Lossless; :func:`transcode` makes such
copies of any readable file, so the same slices can be read through every decoder of
:mod:`covidnet.data.pixels`. RLE, JPEG-LS and JPEG 2000 are encoded by pydicom's encoders
(``Dataset.compress``: its own RLE, pyjpegls, pylibjpeg-openjpeg), JPEG Lossless (process 14,
first-order prediction, ``1.2.840.10008.1.2.4.70``) by GDCM, for which pydicom has no encoder.
Every encoding is lossless: the copy decodes to the very stored values of the source.
"""

from __future__ import annotations

from pathlib import Path

from covidnet.data.pixels import SYNTAXES

#: Syntaxes :func:`transcode` writes: the short names of :data:`covidnet.data.pixels.SYNTAXES`
#: (the first, lossless UID of each) and ``none`` (Explicit VR Little Endian).
TARGETS = (*SYNTAXES, "none")


def transcode(src: Path | str, dst: Path | str, syntax: str) -> Path:
    """Write ``dst``: the DICOM file ``src`` with its pixel data losslessly in ``syntax``.

    Args:
        src: a DICOM image (native or compressed).
        dst: the copy (its folder is created).
        syntax: one of :data:`TARGETS`.

    Returns:
        ``dst``.

    Raises:
        ValueError: an unknown ``syntax``.
        RuntimeError: GDCM cannot read, encode or write the file (JPEG Lossless).
    """
    import pydicom
    import pydicom.uid

    if syntax not in TARGETS:
        raise ValueError(f"syntax {syntax!r} is not one of {', '.join(TARGETS)}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if syntax == "jpeg_lossless":
        return _gdcm_jpeg_lossless(Path(src), dst)
    ds = pydicom.dcmread(str(src))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    if syntax != "none":
        ds.compress(pydicom.uid.UID(SYNTAXES[syntax][0]), generate_instance_uid=False)
    ds.save_as(dst, enforce_file_format=True)
    return dst


def _gdcm_jpeg_lossless(src: Path, dst: Path) -> Path:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"{src}: GDCM cannot read the file")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"{src}: GDCM cannot encode JPEG Lossless")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"{dst}: GDCM cannot write the file")
    return dst

"""Every decoder of covidnet.data.pixels against pydicom's pixel_array, per transfer syntax, on real files.

The files are written by covidnet.synthetic.dicom_writer (uncompressed) and copied losslessly
into each compressed syntax by covidnet.data.transcode (pydicom's encoders; GDCM for JPEG
Lossless). A decoder must give the very stored values pydicom gives, whole or as a window.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from covidnet.data.pixels import (
    DECODERS,
    SYNTAXES,
    SeriesReadError,
    check_decoders,
    decoder_available,
    read_stored,
    syntax_name,
)
from covidnet.data.transcode import transcode
from covidnet.params import ParamsError
from covidnet.synthetic.dicom_writer import stored_encoding, write_series
from support.dicom_cases import SPACING, edit_dataset, random_volume

SHAPE = (3, 36, 40)  # rows != columns; JPEG 2000 wants at least 32 x 32


def write_codec_series(root: Path, volume: np.ndarray, syntax: str, **kwargs) -> list[Path]:
    """``volume`` as one series of ``syntax`` (a short name or ``none``), one file per slice."""
    plain = write_series(root / "plain", volume, SPACING, **kwargs)
    if syntax == "none":
        return plain
    out = [transcode(p, root / syntax / p.name, syntax) for p in plain]
    shutil.rmtree(root / "plain")
    return out


def _cases():
    for syntax in SYNTAXES:
        for name in DECODERS:
            if decoder_available(name, syntax):
                yield pytest.param(syntax, name, id=f"{syntax}-{name}")


@pytest.mark.parametrize("syntax,decoder", list(_cases()))
@pytest.mark.parametrize("signed,intercept,slope", [(1, -1024.0, 1.0), (0, -1024.0, 1.0), (0, 0.0, 0.5), (1, 0.0, 1.0)],
                         ids=["signed", "unsigned", "unsigned-slope", "signed-zero"])
def test_decoder_gives_pydicoms_values(tmp_path: Path, syntax: str, decoder: str, signed: int, intercept: float,
                                       slope: float) -> None:
    volume = random_volume(7, SHAPE, slope)
    paths = write_codec_series(tmp_path, volume, syntax, rescale_intercept=intercept, rescale_slope=slope,
                               pixel_representation=signed)
    _, bits = stored_encoding(intercept, slope, signed)
    for path in paths:
        ds = pydicom.dcmread(path)
        assert syntax_name(ds.file_meta.TransferSyntaxUID) == syntax
        want = ds.pixel_array
        got = read_stored(path, -1, bits, signed, SHAPE[1:], decoders={syntax: [decoder]})
        assert got.dtype.kind == want.dtype.kind and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        window = read_stored(path, -1, bits, signed, SHAPE[1:], rows=(5, 30), cols=(3, 37), decoders={syntax: [decoder]})
        np.testing.assert_array_equal(window, want[5:30, 3:37])


def test_transcoded_files_decode_to_the_source_values(tmp_path: Path) -> None:
    volume = random_volume(8, SHAPE)
    plain = write_series(tmp_path / "plain", volume, SPACING)
    want = pydicom.dcmread(plain[0]).pixel_array
    for syntax in (*SYNTAXES, "none"):
        copy = transcode(plain[0], tmp_path / syntax / "x.dcm", syntax)
        ds = pydicom.dcmread(copy)
        assert ds.SOPInstanceUID == pydicom.dcmread(plain[0]).SOPInstanceUID
        np.testing.assert_array_equal(ds.pixel_array, want)
    with pytest.raises(ValueError, match="is not one of"):
        transcode(plain[0], tmp_path / "y.dcm", "jpeg_xl")


def test_in_place_read_takes_a_column_window(tmp_path: Path) -> None:
    from covidnet.data.dicom import read_header

    path = write_series(tmp_path / "s", random_volume(9, SHAPE), SPACING)[0]
    h = read_header(path)
    whole = read_stored(path, h.pixel_offset, h.bits_stored, h.pixel_representation, SHAPE[1:])
    part = read_stored(path, h.pixel_offset, h.bits_stored, h.pixel_representation, SHAPE[1:], rows=(2, 9), cols=(4, 11))
    np.testing.assert_array_equal(part, whole[2:9, 4:11])


def test_unavailable_or_inapplicable_decoders_are_skipped(tmp_path: Path) -> None:
    path = write_codec_series(tmp_path, random_volume(10, SHAPE), "rle")[0]
    assert not decoder_available("gdcm", "rle")  # GDCM's region reader is not used for RLE
    got = read_stored(path, -1, 16, 1, SHAPE[1:], decoders={"rle": ["gdcm", "pydicom"]})
    np.testing.assert_array_equal(got, pydicom.dcmread(path).pixel_array)
    # no installed decoder listed for the syntax: pydicom's own choice
    got = read_stored(path, -1, 16, 1, SHAPE[1:], decoders={"rle": ["gdcm"]})
    np.testing.assert_array_equal(got, pydicom.dcmread(path).pixel_array)


@pytest.mark.parametrize("syntax", ["jpeg_ls", "jpeg2000", "jpeg_lossless"])
def test_corrupt_frame_fails_every_decoder_and_names_file_and_decoders(tmp_path: Path, syntax: str) -> None:
    path = write_codec_series(tmp_path, random_volume(11, SHAPE), syntax)[1]
    edit_dataset(path, lambda ds: setattr(ds, "PixelData", encapsulate([b"\xff" * 64])))
    names = [n for n in ("gdcm", "pylibjpeg", "pyjpegls", "pydicom") if decoder_available(n, syntax)]

    with pytest.raises(SeriesReadError, match="cannot decode pixel data") as info:
        read_stored(path, -1, 16, 1, SHAPE[1:], decoders={syntax: names})

    assert str(path) in str(info.value)
    for name in names:
        assert f"{name}:" in str(info.value)


@pytest.mark.parametrize("syntax", ["jpeg_ls", "jpeg2000", "jpeg_lossless"])
def test_slice_of_another_size_is_an_error_for_gdcm_too(tmp_path: Path, syntax: str) -> None:
    path = write_codec_series(tmp_path, random_volume(12, SHAPE), syntax)[0]
    with pytest.raises(SeriesReadError, match="differs from the series"):
        read_stored(path, -1, 16, 1, (40, 40), decoders={syntax: ["gdcm"]})


def test_unknown_syntax_or_decoder_is_a_params_error() -> None:
    check_decoders({"jpeg2000": ["gdcm", "pylibjpeg"]})
    check_decoders(None)
    with pytest.raises(ParamsError, match="preprocess.decoders: 'jpeg_xl' is not one of"):
        check_decoders({"jpeg_xl": ["gdcm"]})
    with pytest.raises(ParamsError, match=r"preprocess.decoders.rle: \['fast'\] not among"):
        check_decoders({"rle": ["fast"]})

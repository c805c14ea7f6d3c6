"""Tests of keraslm.io: geometry, round trips for every format, landmark CSVs, bad input."""
import os

import nibabel as nib
import numpy as np
import PIL.Image
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keraslm import ImageReadError, ImageWriteError, KeraslmError, LandmarkFileError
from keraslm.io import (
    Image,
    LandmarkTable,
    read_image,
    read_image_header,
    read_landmarks,
    write_dicom,
    write_dicom_series,
    write_landmarks,
    write_nifti,
    write_png,
)


def rotation(seed, ndim=3):
    """A random right-handed rotation matrix (oblique orientation)."""
    matrix = np.linalg.qr(np.random.default_rng(seed).normal(size=(ndim, ndim)))[0]
    if np.linalg.det(matrix) < 0:
        matrix[:, 0] *= -1
    return matrix


@pytest.fixture
def volume():
    rng = np.random.default_rng(7)
    return Image(
        rng.integers(0, 4000, size=(5, 6, 7)).astype(np.uint16),
        spacing=(0.4, 0.55, 1.25),
        origin=(-10.0, 20.5, 3.0),
        direction=rotation(3),
    )


@pytest.fixture
def picture():
    rng = np.random.default_rng(8)
    return Image(
        rng.integers(0, 60000, size=(9, 13)).astype(np.uint16),
        spacing=(0.3, 0.7),
        origin=(12.0, -4.5),
    )


def assert_same_geometry(read, expected, atol=1e-5):
    np.testing.assert_allclose(read.spacing, expected.spacing, atol=atol)
    np.testing.assert_allclose(read.origin, expected.origin, atol=atol)
    np.testing.assert_allclose(read.direction, expected.direction, atol=atol)
    points = np.array([[0.0] * expected.ndim, [1.5, 2.25, 0.75][: expected.ndim], expected.size])
    np.testing.assert_allclose(
        read.index_to_physical(points), expected.index_to_physical(points), atol=atol
    )


# ------------------------------------------------------------------------------ geometry


def test_index_to_physical_formula():
    image = Image(np.zeros((4, 6)), spacing=(0.5, 0.25), origin=(1.0, 2.0), direction=[[0, -1], [1, 0]])
    # physical = origin + direction @ (spacing * index): x step -> +y mm, y step -> -x mm.
    np.testing.assert_allclose(image.index_to_physical([[2.0, 4.0]]), [[1.0 - 1.0, 2.0 + 1.0]])
    np.testing.assert_allclose(image.physical_to_index([[0.0, 3.0]]), [[2.0, 4.0]])
    assert image.size == (6, 4)


def test_nan_points_stay_nan():
    image = Image(np.zeros((4, 6)), spacing=(0.5, 0.25))
    result = image.index_to_physical([[np.nan, np.nan], [1.0, 1.0]])
    assert np.all(np.isnan(result[0])) and np.all(np.isfinite(result[1]))


@settings(max_examples=60, deadline=None)
@given(
    ndim=st.sampled_from([2, 3]),
    seed=st.integers(0, 10_000),
    spacing=st.lists(st.floats(0.01, 10.0), min_size=3, max_size=3),
    origin=st.lists(st.floats(-500, 500), min_size=3, max_size=3),
    points=st.lists(st.floats(-1000, 1000), min_size=12, max_size=12),
)
def test_index_physical_round_trip(ndim, seed, spacing, origin, points):
    image = Image(
        np.zeros((2,) * ndim), spacing=spacing[:ndim], origin=origin[:ndim], direction=rotation(seed, ndim)
    )
    points_index = np.array(points[: 4 * ndim]).reshape(4, ndim)
    back = image.physical_to_index(image.index_to_physical(points_index))
    np.testing.assert_allclose(back, points_index, atol=1e-6 * (1 + np.abs(points_index).max()))


def test_image_rejects_bad_geometry():
    with pytest.raises(KeraslmError, match="must be 2D or 3D"):
        Image(np.zeros(5), spacing=1.0)
    with pytest.raises(KeraslmError, match="`spacing` must be positive"):
        Image(np.zeros((3, 3)), spacing=(1.0, 0.0))
    with pytest.raises(KeraslmError, match="`origin` must have 2 values"):
        Image(np.zeros((3, 3)), spacing=1.0, origin=(0, 0, 0))
    with pytest.raises(KeraslmError, match="must be invertible"):
        Image(np.zeros((3, 3)), spacing=1.0, direction=[[1, 0], [1, 0]])
    with pytest.raises(KeraslmError, match=r"shape \(\.\.\., 2\)"):
        Image(np.zeros((3, 3)), spacing=1.0).index_to_physical([[1.0, 2.0, 3.0]])


# ------------------------------------------------------------------------------ plain images


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_round_trip(tmp_path, picture, dtype):
    image = picture.with_array((picture.array // (257 if dtype == np.uint8 else 1)).astype(dtype))
    write_png(tmp_path / "a.png", image)
    read = read_image(tmp_path / "a.png", spacing=(0.3, 0.7))
    assert read.array.dtype == dtype
    np.testing.assert_array_equal(read.array, image.array)
    assert read.spacing_source == "caller"
    np.testing.assert_allclose(read.spacing, [0.3, 0.7])
    default = read_image(tmp_path / "a.png")
    assert default.spacing_source == "default" and np.all(default.spacing == 1.0)
    assert os.listdir(tmp_path) == ["a.png"]  # No temporary files left behind.


def test_colour_images_become_grey(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 200
    PIL.Image.fromarray(rgb).save(tmp_path / "colour.bmp")
    grey = read_image(tmp_path / "colour.bmp")
    np.testing.assert_allclose(grey.array, 0.299 * 100 + 0.587 * 50 + 0.114 * 200, rtol=1e-6)
    same = np.repeat(np.arange(20, dtype=np.uint8).reshape(4, 5, 1), 3, axis=2)
    PIL.Image.fromarray(same).save(tmp_path / "grey3.png")
    read = read_image(tmp_path / "grey3.png")
    assert read.array.dtype == np.uint8
    np.testing.assert_array_equal(read.array, same[..., 0])


def test_jpeg_and_tiff_read(tmp_path):
    array = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))
    PIL.Image.fromarray(array).save(tmp_path / "a.jpg", quality=100)
    PIL.Image.fromarray(array).save(tmp_path / "a.tif")
    assert np.abs(read_image(tmp_path / "a.jpg").array.astype(int) - array).max() <= 3
    np.testing.assert_array_equal(read_image(tmp_path / "a.tif").array, array)


def test_plain_header_reads_size_only(tmp_path, picture):
    write_png(tmp_path / "a.png", picture)
    header = read_image_header(tmp_path / "a.png", spacing=0.1)
    assert header.array.shape == picture.array.shape
    assert header.array.strides == (0, 0)  # A placeholder, no pixel memory.
    np.testing.assert_allclose(header.spacing, [0.1, 0.1])


# ------------------------------------------------------------------------------ DICOM


def test_dicom_2d_round_trip(tmp_path, picture):
    write_dicom(tmp_path / "a.dcm", picture)
    read = read_image(tmp_path / "a.dcm")
    np.testing.assert_array_equal(read.array, picture.array)
    assert read.spacing_source == "PixelSpacing"
    assert_same_geometry(read, picture)
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    # PixelSpacing is (row spacing = y, column spacing = x).
    assert [float(v) for v in ds.PixelSpacing] == [0.7, 0.3]


def test_dicom_float_pixels_use_rescale(tmp_path, picture):
    values = picture.array.astype(np.float32) / 7.0 - 1000.0
    write_dicom(tmp_path / "f.dcm", picture.with_array(values))
    read = read_image(tmp_path / "f.dcm")
    assert read.array.dtype == np.float32
    np.testing.assert_allclose(read.array, values, atol=1e-5 * np.ptp(values) + 1e-3)


def test_dicom_imager_pixel_spacing_monochrome1_and_rescale(tmp_path, picture):
    write_dicom(tmp_path / "a.dcm", picture.with_array(picture.array % 4096))
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = ["0.2", "0.15"]
    ds.BitsStored = 12
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.RescaleSlope = "2"
    ds.RescaleIntercept = "-100"
    ds.save_as(tmp_path / "b.dcm")
    read = read_image(tmp_path / "b.dcm")
    assert read.spacing_source == "ImagerPixelSpacing"
    np.testing.assert_allclose(read.spacing, [0.15, 0.2])
    expected = (4095 - (picture.array % 4096).astype(np.float64)) * 2 - 100
    np.testing.assert_allclose(read.array, expected)


def test_dicom_2d_matches_dicom_formula(tmp_path):
    image = Image(np.ones((4, 5), np.uint16), spacing=(0.5, 0.8), origin=(3.0, -7.0), direction=rotation(1, 2))
    write_dicom(tmp_path / "a.dcm", image)
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    position = np.array(ds.ImagePositionPatient, float)
    row_cosines, column_cosines = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
    read = read_image(tmp_path / "a.dcm")
    for column, row in [(0, 0), (4, 0), (2, 3), (1.5, 2.5)]:
        expected = position + column * column_spacing * row_cosines + row * row_spacing * column_cosines
        np.testing.assert_allclose(read.index_to_physical([column, row]), expected[:2], atol=1e-6)


@pytest.mark.parametrize("layout", ["multiframe", "series"])
def test_dicom_3d_round_trip_oblique(tmp_path, volume, layout):
    path = tmp_path / ("v.dcm" if layout == "multiframe" else "series")
    (write_dicom if layout == "multiframe" else write_dicom_series)(path, volume)
    read = read_image(path)
    np.testing.assert_array_equal(read.array, volume.array)
    assert_same_geometry(read, volume)
    header = read_image_header(path)
    assert header.array.shape == volume.array.shape
    assert_same_geometry(header, volume)


def test_dicom_series_matches_dicom_formula_and_sorts_slices(tmp_path, volume):
    write_dicom_series(tmp_path / "series", volume)
    # Shuffle the file names so that only ImagePositionPatient can give the order.
    names = sorted(os.listdir(tmp_path / "series"))
    for index, name in enumerate(names):
        os.rename(tmp_path / "series" / name, tmp_path / "series" / f"x{(index * 7) % len(names):04d}.tmp")
    read = read_image(tmp_path / "series")
    np.testing.assert_array_equal(read.array, volume.array)
    for name in os.listdir(tmp_path / "series"):
        ds = pydicom.dcmread(tmp_path / "series" / name)
        position = np.array(ds.ImagePositionPatient, float)
        x_cosines, y_cosines = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        k = int(ds.InstanceNumber) - 1
        np.testing.assert_array_equal(read.array[k], ds.pixel_array)
        for column, row in [(0, 0), (6, 2), (3.5, 4.25)]:
            expected = position + column * column_spacing * x_cosines + row * row_spacing * y_cosines
            np.testing.assert_allclose(read.index_to_physical([column, row, k]), expected, atol=1e-6)


def test_dicom_series_rejects_two_series_and_uneven_gaps(tmp_path, volume):
    write_dicom_series(tmp_path / "a", volume)
    os.remove(tmp_path / "a" / "slice_0002.dcm")
    with pytest.raises(ImageReadError, match=r"slice spacing is not uniform \(gaps from 1.25 to 2.5 "
                       r"mm; 1 gap\(s\) of 2.5 mm where the others are 1.25: slice\(s\) missing"):
        read_image(tmp_path / "a")
    write_dicom_series(tmp_path / "b", volume)
    write_dicom_series(tmp_path / "c", volume)
    os.rename(tmp_path / "c" / "slice_0000.dcm", tmp_path / "b" / "other.dcm")
    with pytest.raises(ImageReadError, match="holds 2 DICOM series"):
        read_image(tmp_path / "b")


def test_dicom_series_of_tilted_rounded_or_incomplete_slices(tmp_path, volume):
    """A gantry tilt (each slice shifted within its plane) was read as a straight stack, the
    landmarks up to 19 mm off: refused. Positions rounded to 1e-3 mm on 0.625 mm slices were
    refused as uneven gaps: read. A slice without ImageOrientationPatient other than the first
    was a TypeError: named."""
    def rewrite(folder, change):
        for number, name in enumerate(sorted(os.listdir(folder))):
            ds = pydicom.dcmread(folder / name)
            change(number, ds)
            ds.save_as(folder / name)

    write_dicom_series(tmp_path / "tilt", volume)
    row_axis = np.array(volume.direction)[:, 1]

    def tilt(number, ds):
        position = np.array(ds.ImagePositionPatient, float)
        slice_index = int(ds.InstanceNumber) - 1
        ds.ImagePositionPatient = list(position + np.tan(np.radians(20)) * 1.25 * slice_index * row_axis)

    rewrite(tmp_path / "tilt", tilt)
    with pytest.raises(ImageReadError, match=r"tilt: the slices are shifted within their plane "
                       r"from one to the next \(up to 1.82 mm: a gantry tilt"):
        read_image(tmp_path / "tilt")
    thin = Image(volume.array, spacing=(0.4, 0.55, 0.625), origin=volume.origin,
                 direction=volume.direction)
    write_dicom_series(tmp_path / "thin", thin)
    rewrite(tmp_path / "thin", lambda number, ds: setattr(
        ds, "ImagePositionPatient", [round(float(v), 3) for v in ds.ImagePositionPatient]))
    np.testing.assert_allclose(read_image(tmp_path / "thin").spacing, thin.spacing, atol=1e-3)
    write_dicom_series(tmp_path / "no_orientation", volume)
    rewrite(tmp_path / "no_orientation",
            lambda number, ds: delattr(ds, "ImageOrientationPatient") if number == 3 else None)
    with pytest.raises(ImageReadError, match="slice_0003.dcm: slice has no ImageOrientationPatient"):
        read_image(tmp_path / "no_orientation")


def test_multiframe_without_per_frame_geometry_is_rejected(tmp_path, volume):
    write_dicom(tmp_path / "v.dcm", volume)
    ds = pydicom.dcmread(tmp_path / "v.dcm")
    del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(tmp_path / "w.dcm")
    with pytest.raises(ImageReadError, match="no per-frame geometry"):
        read_image(tmp_path / "w.dcm")


# ------------------------------------------------------------------------------ NIfTI


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_and_affine(tmp_path, volume, picture, suffix):
    for image, name in ((volume, "v"), (picture, "p")):
        path = tmp_path / (name + suffix)
        write_nifti(path, image)
        read = read_image(path)
        np.testing.assert_array_equal(read.array, image.array)
        assert read.spacing_source == "nifti"
        assert_same_geometry(read, image)


def test_nifti_whose_geometries_disagree_or_are_missing_is_warned(tmp_path, capsys):
    """qform and sform both set and different: keraslm (as nibabel) reads the sform, ITK and
    3D Slicer the qform - landmarks placed in Slicer land elsewhere; neither set: nibabel's
    fallback, which Slicer does not share. Both were silent; a KeraslmWarning now, which the
    commands print as one line."""
    import warnings

    import nibabel as nib

    from keraslm.errors import KeraslmWarning

    data = np.zeros((6, 5, 4), np.float32)
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    cases = {}
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    cases["same.nii.gz"] = image
    shifted = affine.copy()
    shifted[0, 3] = 10.0
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=1)
    image.set_sform(shifted, code=2)
    cases["differ.nii.gz"] = image
    image = nib.Nifti1Image(data, None)
    image.set_qform(None, code=0)
    image.set_sform(None, code=0)
    cases["neither.nii.gz"] = image
    for name, image in cases.items():
        nib.save(image, str(tmp_path / name))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        read_image(tmp_path / "same.nii.gz")
    assert not [w for w in caught if issubclass(w.category, KeraslmWarning)]
    with pytest.warns(KeraslmWarning, match=r"differ.nii.gz: its qform and sform disagree "
                      r"\(origins 10 mm apart\): keraslm reads the sform"):
        assert read_image(tmp_path / "differ.nii.gz").origin[0] == -10.0  # LPS x of RAS 10.
    with pytest.warns(KeraslmWarning, match="neither.nii.gz: stores no orientation"):
        read_image(tmp_path / "neither.nii.gz")
    from keraslm.cli import _show_keraslm_warning  # The commands' format: one line.

    _show_keraslm_warning("a message", KeraslmWarning, "x.py", 1)
    assert capsys.readouterr().err == "warning: a message\n"


def test_nifti_index_to_physical_matches_nibabel(tmp_path):
    affine = np.array([[0.0, -0.9, 0.1, 12.0], [1.1, 0.0, 0.0, -30.0], [0.0, 0.05, 2.5, 7.0], [0, 0, 0, 1]])
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (i, j, k)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "n.nii.gz")
    read = read_image(tmp_path / "n.nii.gz")
    assert read.array.shape == (6, 5, 4)  # [z, y, x] = data.T
    assert read.array[5, 4, 3] == data[3, 4, 5]
    ijk = np.array([[0, 0, 0], [3, 4, 5], [1.5, 2.25, 0.5]])
    ras = nib.affines.apply_affine(nib.load(tmp_path / "n.nii.gz").affine, ijk)
    lps = ras * [-1, -1, 1]
    np.testing.assert_allclose(read.index_to_physical(ijk), lps, atol=1e-5)


# ------------------------------------------------------------------------------ bad images


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ImageReadError, match=r"nothere\.png: no such file"):
        read_image(tmp_path / "nothere.png")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageReadError, match=r"notes\.txt: unsupported file type"):
        read_image(tmp_path / "notes.txt")


def test_corrupt_and_truncated_images(tmp_path, picture):
    (tmp_path / "garbage.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match=r"garbage\.png: not a readable image"):
        read_image(tmp_path / "garbage.png")
    write_png(tmp_path / "full.png", picture)
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png: corrupt or truncated"):
        read_image(tmp_path / "cut.png")
    write_nifti(tmp_path / "full.nii", picture)
    data = (tmp_path / "full.nii").read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[: len(data) - 40])
    with pytest.raises(ImageReadError, match=r"cut\.nii: cannot read NIfTI voxel data"):
        read_image(tmp_path / "cut.nii")
    (tmp_path / "bad.dcm").write_bytes(b"\x00" * 50)
    with pytest.raises(ImageReadError, match=r"bad\.dcm: not a readable DICOM file"):
        read_image(tmp_path / "bad.dcm")


def test_dicom_without_pixel_data(tmp_path, picture):
    write_dicom(tmp_path / "a.dcm", picture)
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(ImageReadError, match=r"nopixels\.dcm: DICOM file has no pixel data"):
        read_image(tmp_path / "nopixels.dcm")


@pytest.mark.parametrize("shape, dims", [((4, 5, 6, 2), "4D"), ((7,), "1D")])
def test_nifti_wrong_dimension(tmp_path, shape, dims):
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), tmp_path / "x.nii")
    with pytest.raises(ImageReadError, match=rf"x\.nii: NIfTI image of shape .* is {dims}"):
        read_image(tmp_path / "x.nii")


def test_non_finite_pixels(tmp_path):
    data = np.ones((4, 5), np.float32)
    data[1, 2] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(ImageReadError, match=r"nan\.nii: contains non-finite"):
        read_image(tmp_path / "nan.nii")
    PIL.Image.fromarray(np.where(np.isnan(data), np.inf, data)).save(tmp_path / "inf.tif")
    with pytest.raises(ImageReadError, match=r"inf\.tif: contains non-finite"):
        read_image(tmp_path / "inf.tif")


def test_failed_write_leaves_nothing(tmp_path, picture, monkeypatch):
    with pytest.raises(ImageWriteError, match="integer pixels"):
        write_png(tmp_path / "a.png", picture.with_array(picture.array + 0.5))

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PIL.Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_png(tmp_path / "b.png", picture)
    monkeypatch.setattr(pydicom.Dataset, "save_as", broken_save)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_series(tmp_path / "series", Image(np.zeros((3, 4, 5), np.uint16), spacing=1.0))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ landmarks


def test_landmarks_named_round_trip_with_missing(tmp_path):
    points = np.array([[[1.5, 2.0], [np.nan, np.nan]], [[3.0, 4.25], [5.0, 6.0]]])
    table = LandmarkTable(["a", "b"], ["tip", "base"], points)
    write_landmarks(tmp_path / "l.csv", table)
    text = (tmp_path / "l.csv").read_text().splitlines()
    assert text[0] == "id,tip_x,tip_y,base_x,base_y"
    assert text[1] == "a,1.5,2.0,,"
    read = read_landmarks(tmp_path / "l.csv")
    assert read.ids == ("a", "b") and read.names == ("tip", "base") and read.ndim == 2
    np.testing.assert_array_equal(read.points, points)


def test_landmarks_headerless_3d_and_nan_text(tmp_path):
    (tmp_path / "h.csv").write_text("s1,1,2,3,4,5,6\ns2,nan,NaN,nan,7,8,9\n")
    with pytest.raises(LandmarkFileError, match="headerless landmark file.*pass ndim"):
        read_landmarks(tmp_path / "h.csv")
    table = read_landmarks(tmp_path / "h.csv", ndim=3)
    assert table.points.shape == (2, 2, 3)
    assert np.all(np.isnan(table.points[1, 0])) and table.points[1, 1].tolist() == [7, 8, 9]
    write_landmarks(tmp_path / "out.csv", table, layout="headerless")
    assert (tmp_path / "out.csv").read_text().splitlines()[1] == "s2,,,,7.0,8.0,9.0"


@pytest.mark.parametrize(
    "content, message",
    [
        ("id,a_x,a_y\n1,2,3\n2,4\n", r"line 3: 2 columns; expected 3"),
        ("id,a_x,a_y\n1,2,zz\n", r"line 2, column 3: not a number: 'zz'"),
        ("id,a_x,a_y\n1,2,3\n1,4,5\n", r"duplicate ids: 1"),
        ("id,a_x,a_y,b_x\n1,2,3,4\n", r"header columns 4-5 are \['b_x'\]|not a multiple of 2"),
        ("id,a_x,a_q\n1,2,3\n", r"header columns 2-3 are \['a_x', 'a_q'\]"),
        ("1,2,3,4,5\n1,2,3\n", r"line 2: 3 columns; expected 5"),
        ("1,2,3,4\n", r"3 coordinate columns is not a multiple of ndim=2"),
        ("", r"file holds no landmarks"),
        ("id,a_x,a_y\n1,inf,2\n", r"infinite value"),
    ],
)
def test_bad_landmark_files(tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(LandmarkFileError, match=r"bad\.csv.*" + message):
        read_landmarks(tmp_path / "bad.csv", ndim=2 if content.startswith("1,") else None)


def test_missing_landmark_file(tmp_path):
    with pytest.raises(LandmarkFileError, match=r"none\.csv: no such file"):
        read_landmarks(tmp_path / "none.csv")


# -- the image-format registry ----------------------------------------------------------------

@pytest.fixture
def npy_format():
    """A toy format registered for one test: NumPy .npy arrays with 0.5 mm pixels."""
    from keraslm.io import IMAGE_FORMATS, ImageFormat, register_image_format

    def read(path, spacing=None):
        return Image(np.load(path).astype(np.float32), spacing=spacing or 0.5, path=path,
                     spacing_source="caller" if spacing else "file")

    def read_header(path, spacing=None):
        shape = np.load(path, mmap_mode="r").shape
        return Image(np.broadcast_to(np.zeros((), np.float32), shape), spacing=spacing or 0.5,
                     path=path, spacing_source="caller" if spacing else "file")

    image_format = register_image_format(ImageFormat(
        "NumPy", (".npy",), read, read_header, write=lambda path, image: np.save(path, image.array)))
    yield image_format
    del IMAGE_FORMATS[image_format.name]


def test_a_registered_format_is_read_written_and_named_everywhere(npy_format, tmp_path):
    """Adding a format is one registration: reading, headers, writing, image ids and datasets
    follow from it."""
    from keraslm.data import from_csv, image_id_from_path
    from keraslm.io import is_image_path, register_image_format, write_image
    from keraslm.io.images import supported_formats

    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = str(tmp_path / "scan_01.npy")
    write_image(path, Image(array, spacing=1.0))
    assert is_image_path(path) and image_id_from_path(path) == "scan_01"
    image = read_image(path)
    np.testing.assert_array_equal(image.array, array)
    assert read_image_header(path).array.shape == (3, 4) and image.spacing[0] == 0.5
    assert "NumPy (.npy)" in supported_formats()
    (tmp_path / "landmarks.csv").write_text("id,a_x,a_y\nscan_01,1,2\n")
    dataset = from_csv(str(tmp_path / "landmarks.csv"), str(tmp_path), units="index")
    np.testing.assert_allclose(dataset.points_mm[0, 0], [0.5, 1.0])
    with pytest.raises(KeraslmError, match="registered already"):
        register_image_format(npy_format)


def test_unregistered_extensions_are_named_in_the_error(tmp_path):
    path = tmp_path / "scan.xyz"
    path.write_bytes(b"0")
    with pytest.raises(ImageReadError, match=r"scan\.xyz: unsupported file type.*NIfTI \(\.nii, \.nii\.gz\)"):
        read_image(str(path))
    with pytest.raises(ImageWriteError, match=r"scan\.xyz: keraslm writes images as"):
        from keraslm.io import write_image
        write_image(str(path), Image(np.zeros((2, 2)), spacing=1.0))


def test_dicom_files_without_an_extension_are_images(tmp_path):
    """Scanners write DICOM files without an extension: a folder scan finds them by the "DICM"
    marker (as read_image reads them), and a README without an extension is not an image."""
    import shutil

    from keraslm.io import is_image_path, read_image, write_dicom

    image = Image(np.arange(30, dtype=np.float32).reshape(5, 6), spacing=(0.5, 0.7))
    write_dicom(str(tmp_path / "scan.dcm"), image)
    shutil.copy(tmp_path / "scan.dcm", tmp_path / "IM0001")
    (tmp_path / "README").write_text("not an image" * 20)
    (tmp_path / "short").write_bytes(b"x")
    assert is_image_path(str(tmp_path / "IM0001"))
    assert not is_image_path(str(tmp_path / "README")) and not is_image_path(str(tmp_path / "short"))
    np.testing.assert_allclose(read_image(str(tmp_path / "IM0001")).spacing, (0.5, 0.7))


def test_grey_alpha_png_and_cmyk_jpeg_read_as_their_grey_values(tmp_path):
    """A grey+alpha PNG was refused and a CMYK JPEG (Adobe stores it inverted) read as the
    negative; both read as the grey values they show now."""
    from PIL import Image as PilImage

    grey = (np.arange(48 * 64).reshape(48, 64) % 256).astype(np.uint8)
    PilImage.fromarray(np.stack([grey, np.full_like(grey, 255)], -1), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "la.png"), spacing=1.0).array, grey)
    PilImage.fromarray(np.stack([grey] * 3, -1)).convert("CMYK").save(tmp_path / "cmyk.jpg",
                                                                       quality=100)
    cmyk = read_image(str(tmp_path / "cmyk.jpg"), spacing=1.0).array
    assert np.corrcoef(cmyk.ravel(), grey.ravel())[0, 1] > 0.99

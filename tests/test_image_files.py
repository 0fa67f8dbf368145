"""Truncated image files are refused before ITK reads their missing part as zeros (nnunet_ccesemi.image_files)."""
from __future__ import annotations

import bz2
import gzip
import json
import os
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_ccesemi.image_files import ImageFileError, _inflated_size, check_image_file, read_image

# (file name, compressed, detached data file written by ITK or None)
FORMATS = [
    ("case.nii.gz", True, None),
    ("case.nii", False, None),
    ("case.nrrd", True, None),
    ("case.nrrd", False, None),
    ("case.mha", True, None),
    ("case.mha", False, None),
    ("case.mhd", False, "case.raw"),
    ("case.mhd", True, "case.zraw"),
    ("case.nhdr", False, "case.raw"),
]
IDS = [f"{name}{'-compressed' if compressed else ''}" for name, compressed, _ in FORMATS]


def _volume(dtype=np.int16) -> sitk.Image:
    array = np.random.default_rng(0).normal(0, 100, size=(12, 20, 24)).astype(dtype)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 2.5))
    return image


def _write(tmp_path, name: str, compressed: bool, dtype=np.int16):
    path = tmp_path / name
    sitk.WriteImage(_volume(dtype), str(path), compressed)
    return path


def _truncate(path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize("name, compressed, data_file", FORMATS, ids=IDS)
def test_intact_files_pass_and_read_as_written(tmp_path, name, compressed, data_file):
    path = _write(tmp_path, name, compressed)
    check_image_file(path)
    read = sitk.GetArrayFromImage(read_image(path))
    np.testing.assert_array_equal(read, sitk.GetArrayFromImage(_volume()))


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.97])
@pytest.mark.parametrize("name, compressed, data_file", FORMATS, ids=IDS)
def test_truncated_files_are_refused_with_their_name(tmp_path, name, compressed, data_file, fraction):
    path = _write(tmp_path, name, compressed)
    damaged = tmp_path / (data_file or name)
    _truncate(damaged, int(damaged.stat().st_size * fraction))
    with pytest.raises(ImageFileError, match=rf"the image {path} is damaged: .*(ends early|ends inside its "
                                             rf"header|only \d+ bytes)") as refused:
        check_image_file(path)
    if data_file:  # the file to copy again is named
        assert f"its data file {damaged} is cut short" in str(refused.value)


def test_itk_alone_reads_a_truncated_file_as_zeros(tmp_path):
    """Why the check exists: without it the damage goes unnoticed."""
    path = _write(tmp_path, "case.nii.gz", True)
    _truncate(path, path.stat().st_size // 3)
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert array.shape == (12, 20, 24) and (array == 0).mean() > 0.5


def test_cut_at_the_very_end_of_a_gzip_stream_is_still_refused(tmp_path):
    """All voxels may be there, but the CRC and length cannot be verified: the copy is incomplete."""
    path = _write(tmp_path, "case.nii.gz", True)
    _truncate(path, path.stat().st_size - 4)
    with pytest.raises(ImageFileError, match="gzip stream ends early"):
        check_image_file(path)


def test_a_nifti_header_cut_short_is_refused(tmp_path):
    path = _write(tmp_path, "case.nii", False)
    _truncate(path, 200)
    with pytest.raises(ImageFileError, match="ends inside its NIfTI header"):
        check_image_file(path)


def test_corrupt_gzip_data_is_refused(tmp_path):
    path = _write(tmp_path, "case.nii.gz", True)
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(ImageFileError, match="gzip stream is corrupt|ends early"):
        check_image_file(path)


def test_concatenated_gzip_members_are_one_file(tmp_path):
    """gzip allows several members back to back (e.g. ``cat a.gz b.gz``); all count as data."""
    path = _write(tmp_path, "case.nii", False)
    raw = path.read_bytes()
    joined = tmp_path / "joined.nii.gz"
    joined.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]))
    check_image_file(joined)
    half = tmp_path / "half.nii.gz"
    half.write_bytes(gzip.compress(raw[:1000]) + gzip.compress(raw[1000:5000]))
    with pytest.raises(ImageFileError, match="only 4648 bytes"):  # 5000 minus the 352-byte header
        check_image_file(half)


def test_concatenated_bzip2_streams_are_one_file(tmp_path):
    """pbzip2 and lbzip2 write several bzip2 streams back to back; all count as data, and a cut
    last stream is refused (ITK's NrrdIO cannot read bzip2 data, but pynrrd can, and the check
    must neither accuse nor crash on such a file)."""
    path = _write(tmp_path, "case.nrrd", False)
    raw = path.read_bytes()
    header_end = raw.index(b"\n\n") + 2
    header, data = raw[:header_end].replace(b"encoding: raw", b"encoding: bzip2"), raw[header_end:]
    streams = bz2.compress(data[:1000]) + bz2.compress(data[1000:])
    joined = tmp_path / "joined.nrrd"
    joined.write_bytes(header + streams)
    check_image_file(joined)
    joined.write_bytes(header + streams[:-100])
    with pytest.raises(ImageFileError, match="bzip2 stream ends early"):
        check_image_file(joined)


@pytest.mark.parametrize("split", [1, 2, 3, 4], ids=lambda n: f"{n}-bytes-of-the-magic-first")
@pytest.mark.parametrize("kind, compress, make_decompressor, magic", [
    ("bzip2", bz2.compress, bz2.BZ2Decompressor, b"BZh"),
    ("gzip", gzip.compress, lambda: zlib.decompressobj(32 + zlib.MAX_WBITS), b"\x1f\x8b"),
], ids=["bzip2", "gzip"])
def test_a_stream_may_begin_across_a_read_chunk_boundary(kind, compress, make_decompressor, magic, split):
    first, second = compress(b"a" * 500), compress(b"b" * 700)
    chunks = [first + second[:split], second[split:]]  # the read boundary falls inside the magic
    assert _inflated_size(iter(chunks), make_decompressor, kind, magic) == 1200
    assert _inflated_size(iter([first, b"trailing junk"]), make_decompressor, kind, magic) == 500


def test_a_long_attached_nrrd_header_is_read_to_its_end(tmp_path):
    """DWI NRRDs carry thousands of key:=value lines; a header over 64 KiB is still a header."""
    path = _write(tmp_path, "case.nrrd", False)
    raw = path.read_bytes()
    gradients = b"".join(b"DWMRI_gradient_%04d:= 0.1 0.2 0.97\n" % i for i in range(3000))
    long = tmp_path / "long.nrrd"
    long.write_bytes(raw.replace(b"\n\n", b"\n" + gradients + b"\n", 1))
    assert long.stat().st_size - path.stat().st_size > 1 << 16
    check_image_file(long)
    _truncate(long, long.stat().st_size - 10)
    with pytest.raises(ImageFileError, match="only"):
        check_image_file(long)


def test_missing_detached_data_file_is_named(tmp_path):
    path = _write(tmp_path, "case.mhd", False)
    os.remove(tmp_path / "case.raw")
    with pytest.raises(ImageFileError, match=r"its data file .*case\.raw is missing"):
        check_image_file(path)


def test_missing_file_and_unreadable_file(tmp_path):
    with pytest.raises(ImageFileError, match=r"the label .*nothere\.nii\.gz does not exist"):
        check_image_file(tmp_path / "nothere.nii.gz", "label")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not a png")
    check_image_file(garbage)  # formats without a check here are ITK's to judge ...
    with pytest.raises(ImageFileError, match=r"cannot read the image .*garbage\.png"):
        read_image(garbage)  # ... and ITK's error becomes one sentence naming the file


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64, np.int64])
def test_voxel_types_are_sized_right(tmp_path, dtype):
    for name, compressed in (("a.nrrd", False), ("a.mha", False), ("a.nii", False)):
        path = _write(tmp_path, name, compressed, dtype)
        check_image_file(path)
        _truncate(path, path.stat().st_size - 1)
        with pytest.raises(ImageFileError):
            check_image_file(path)


def test_a_nifti_header_is_sized_by_its_datatype_and_a_broken_offset_is_left_to_itk(tmp_path):
    """Readers size a voxel by the datatype code (nifti1.h), not by bitpix: an int16 file whose bitpix says 32
    reads fine and is no cut copy. A NaN vox_offset is ITK's to report, not a crash here."""
    path = _write(tmp_path, "case.nii", False)
    header = bytearray(path.read_bytes())
    header[72:74] = (32).to_bytes(2, "little")  # bitpix 32 for datatype 4 (int16)
    path.write_bytes(bytes(header))
    check_image_file(path)
    header[108:112] = bytes.fromhex("0000c07f")  # vox_offset NaN (little-endian float)
    path.write_bytes(bytes(header))
    check_image_file(path)


def test_metaimage_with_text_data_is_not_taken_for_a_cut_binary_one(tmp_path):
    path = tmp_path / "case.mha"
    values = " ".join(str(v) for v in np.arange(2 * 3 * 4, dtype=np.float32) * 1.5)
    path.write_text("ObjectType = Image\nNDims = 3\nBinaryData = False\nDimSize = 4 3 2\n"
                    f"ElementType = MET_FLOAT\nElementDataFile = LOCAL\n{values}\n")
    check_image_file(path)


def test_vector_images_count_their_components(tmp_path):
    vector = sitk.Compose([_volume(), _volume()])
    for name in ("v.mha", "v.nrrd", "v.nii"):
        path = tmp_path / name
        sitk.WriteImage(vector, str(path), False)
        check_image_file(path)
        _truncate(path, path.stat().st_size - 100)
        with pytest.raises(ImageFileError):
            check_image_file(path)


def test_the_prediction_cli_refuses_a_truncated_input_before_writing(tmp_path):
    from nnunet_ccesemi.cli.predict import check_input_files

    model = tmp_path / "model"
    model.mkdir()
    (model / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "channel_names": {"0": "CT"}}))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for case in ("a", "b"):
        _write(inputs, f"{case}_0000.nii.gz", True)
    check_input_files(str(inputs), str(model))
    _truncate(inputs / "b_0000.nii.gz", 500)
    with pytest.raises(ImageFileError, match=r"the input image .*b_0000\.nii\.gz is damaged"):
        check_input_files(str(inputs), str(model))


@pytest.mark.parametrize("name, compressed, keep, message", [
    ("case.nii.gz", True, 0, r"it is empty \(0 bytes\)"),
    ("case.nii", False, 0, r"it is empty \(0 bytes\)"),
    ("case.mha", False, 0, r"it is empty \(0 bytes\)"),
    ("case.nii.gz", True, 1, r"the file ends inside its gzip header \(1 byte\)"),
    ("case.nii.gz", True, 12, r"the gzip stream ends after 0 bytes of content, inside the NIfTI header"),
    ("case.nii", False, 100, r"the file ends inside its NIfTI header \(100 of at least 348 bytes\)"),
    ("case.nii", False, 3, r"the file ends inside its NIfTI header \(3 of at least 348 bytes\)"),
])
def test_files_cut_before_their_header_is_complete_are_damaged(tmp_path, name, compressed, keep, message):
    """An interrupted copy can leave nothing, or less than a header: that is no file of another kind."""
    path = _write(tmp_path, name, compressed)
    _truncate(path, keep)
    with pytest.raises(ImageFileError, match=f"the image {path} is damaged: {message}"):
        check_image_file(path)


@pytest.mark.parametrize("name, content", [
    ("case.nii", (540).to_bytes(4, "little") + bytes(396)),
    ("case.nii.gz", gzip.compress((540).to_bytes(4, "big") + bytes(396))),
])
def test_a_nifti2_header_cut_past_348_bytes_is_damaged(tmp_path, name, content):
    """NIfTI-2 headers are 540 bytes: 400 of them pass the NIfTI-1 size but are still cut."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageFileError, match=r"ends inside its NIfTI header \(400 of at least 540 bytes\)"):
        check_image_file(path)


def _raw_dataset(tmp_path, monkeypatch, file_ending: str, names: list[str]):
    import nnunetv2.paths

    folder = tmp_path / "Dataset779_X"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"file_ending": file_ending}))
    for name in names:
        (folder / "imagesTr" / name).write_bytes(b"\x89PNG....")
    monkeypatch.setattr(nnunetv2.paths, "nnUNet_raw", str(tmp_path))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    return folder


def test_check_dataset_does_not_call_unchecked_formats_complete(tmp_path, monkeypatch, capsys):
    from nnunet_ccesemi.cli.check_dataset import main

    _raw_dataset(tmp_path, monkeypatch, ".png", ["a_0000.png", "b_0000.png"])
    main(["-d", "Dataset779_X"])
    out = capsys.readouterr().out
    assert "2 .png files found in" in out and "their format has no completeness check here" in out
    assert "complete." not in out


def test_check_dataset_lists_an_unreadable_file_and_checks_the_others(tmp_path, monkeypatch, capsys):
    from nnunet_ccesemi.cli import check_dataset

    folder = _raw_dataset(tmp_path, monkeypatch, ".nii.gz", ["a_0000.nii.gz", "b_0000.nii.gz"])
    checked = []

    def check(path, what):
        checked.append(os.path.basename(path))
        if path.endswith("a_0000.nii.gz"):
            raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(check_dataset, "check_image_file", check)
    with pytest.raises(SystemExit, match=r"1 of 2 files in .* are damaged"):
        check_dataset.main(["-d", "Dataset779_X"])
    assert checked == ["a_0000.nii.gz", "b_0000.nii.gz"]
    assert f"the image {folder}/imagesTr/a_0000.nii.gz cannot be read: PermissionError: Permission denied" in \
        capsys.readouterr().err


@pytest.mark.parametrize("content", ['{"channel_names": {"0": "CT"}}', "{not json", "[]"])
def test_check_dataset_names_a_dataset_json_without_file_ending(content, tmp_path, monkeypatch):
    import nnunetv2.paths

    from nnunet_ccesemi.cli.check_dataset import main

    (tmp_path / "Dataset779_X").mkdir()
    (tmp_path / "Dataset779_X" / "dataset.json").write_text(content)
    monkeypatch.setattr(nnunetv2.paths, "nnUNet_raw", str(tmp_path))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    with pytest.raises(SystemExit, match=r"Dataset779_X/dataset.json is not a dataset.json with a \"file_ending\""):
        main(["-d", "Dataset779_X"])


@pytest.mark.integration
def test_check_dataset_finds_what_nnunet_reads_silently(planned_dataset, tmp_path, monkeypatch, capsys):
    """Troubleshooting row: a truncated labelled file passes nnU-Net's integrity check; ours names it."""
    from nnunet_ccesemi.cli.check_dataset import main
    from tests.conftest import copy_dataset, verify_in_process

    dataset = copy_dataset(planned_dataset, tmp_path / "copy")
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, dataset["env"][variable])
    main(["-d", "777"])
    assert "All 16 .nii.gz files in" in capsys.readouterr().out

    image, label = dataset["raw"] / "imagesTr" / "lab000_0000.nii.gz", dataset["raw"] / "labelsTr" / "lab001.nii.gz"
    for path in (image, label):
        _truncate(path, int(path.stat().st_size * 0.8))
    verify_in_process(dataset["raw"], monkeypatch)  # nnU-Net's --verify_dataset_integrity: no complaint
    with pytest.raises(SystemExit, match=r"2 of 16 files in .* are damaged"):
        main(["-d", "777"])
    listed = capsys.readouterr().err
    assert f"the image {image} is damaged: the gzip stream ends early" in listed
    assert f"the label {label} is damaged: the gzip stream ends early" in listed

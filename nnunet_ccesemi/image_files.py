"""One way to read an image file: refuse a file that is cut short before SimpleITK turns the gap into zeros.

ITK reads a truncated ``.nii.gz`` (an interrupted copy or download) without an error and fills the
missing part of the volume with zeros, so a black volume would be trained on, predicted or scored
as if it were a scan. :func:`check_image_file` catches that from the file itself:

* gzip (``.nii.gz``, NRRD ``encoding: gzip``) and zlib (MetaImage ``CompressedData = True``) streams
  must end with their end-of-stream marker (and gzip's CRC and length must match);
* the data must hold at least the bytes the header promises: the product of the sizes times the
  bytes per voxel, after the header or the NRRD/MetaImage byte skip, for NIfTI-1/2 (``.nii``,
  ``.nii.gz``, ``.hdr``/``.img``), NRRD (``.nrrd``, ``.nhdr`` with a detached data file) and
  MetaImage (``.mha``, ``.mhd`` with a detached data file).

Other formats (PNG, TIFF, DICOM, ...) are left to ITK, which notices a short file there. The check
reads each file once more than ITK does: ``benchmarks/image_check_time.py`` measures the cost.
Everything here is standard library; SimpleITK is imported only by :func:`read_image`.
"""
from __future__ import annotations

import bz2
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Optional, Union

CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
# what a format's check finds: nothing wrong (None), a sentence, or (detached data file, sentence)
Problem = Optional[Union[str, tuple[Path, str]]]


class ImageFileError(ValueError):
    """An image file that is truncated, cut short or unreadable; the message names the file."""


def read_image(path: str | os.PathLike, what: str = "image"):
    """``SimpleITK.ReadImage`` after :func:`check_image_file`; ITK's own errors become one sentence.

    Raises:
        ImageFileError: the file is missing, truncated, or ITK cannot read it.
    """
    import SimpleITK as sitk

    check_image_file(path, what)
    try:
        return sitk.ReadImage(os.fspath(path))
    except RuntimeError as error:
        raise ImageFileError(f"cannot read the {what} {os.fspath(path)}: {short_itk_message(error)}") from error


def short_itk_message(error: Exception) -> str:
    """ITK errors are many lines long; the last non-empty one says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def checked_endings() -> list[str]:
    """The file endings :func:`check_image_file` checks."""
    return [ending for ending, _ in _CHECKERS]


def _checker(path: str | os.PathLike) -> Callable[[Path], Problem] | None:
    name = Path(path).name.lower()
    return next((check for ending, check in _CHECKERS if name.endswith(ending)), None)


def has_check(path: str | os.PathLike) -> bool:
    """Whether :func:`check_image_file` checks this file format (others pass unchecked)."""
    return _checker(path) is not None


def check_image_file(path: str | os.PathLike, what: str = "image") -> None:
    """Raise :class:`ImageFileError` when ``path`` is missing or holds less data than its header promises.

    Formats without a check here pass unchecked; so does a header this module cannot parse (ITK then
    reports it when reading).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"the {what} {path} does not exist or is not a file")
    checker = _checker(path)
    if checker is None:
        return
    problem = "it is empty (0 bytes)" if path.stat().st_size == 0 else checker(path)
    if problem:
        if isinstance(problem, tuple):  # (detached data file, what is wrong with it)
            problem = f"its data file {problem[0]} is cut short: {problem[1]}"
        raise ImageFileError(f"the {what} {path} is damaged: {problem} (an interrupted copy or download?); "
                             f"copy it again from its source")


# --------------------------------------------------------------------------------------------
# Byte streams
# --------------------------------------------------------------------------------------------
class StreamEndsEarly(Exception):
    """A compressed stream stopped before its end-of-stream marker."""


def _chunks(handle: BinaryIO) -> Iterator[bytes]:
    while chunk := handle.read(CHUNK):
        yield chunk


def _inflated_size(chunks: Iterator[bytes], make_decompressor: Callable, kind: str, magic: bytes) -> int:
    """Decompressed length of one or more concatenated streams (each starting with ``magic``);
    raises StreamEndsEarly if one is cut."""
    total, decompressor, started, carry = 0, make_decompressor(), False, b""
    for chunk in chunks:
        chunk, carry = carry + chunk, b""
        while chunk:
            if decompressor.eof:
                # gzip and pbzip2 write several streams back to back; other trailing bytes are
                # ignored, as gzip does
                if len(chunk) < len(magic) and magic.startswith(chunk):
                    carry = chunk  # the next stream's magic may go on in the next chunk
                    break
                if not chunk.startswith(magic):
                    return total
                decompressor = make_decompressor()
            try:
                total += len(decompressor.decompress(chunk))
            except (zlib.error, OSError, EOFError) as error:
                raise StreamEndsEarly(f"the {kind} stream is corrupt ({error})") from error
            started = True
            chunk = decompressor.unused_data if decompressor.eof else b""
    if started and not decompressor.eof:
        raise StreamEndsEarly(f"the {kind} stream ends early, after {total} uncompressed bytes")
    return total


def _gzip_or_zlib() -> "zlib._Decompress":
    return zlib.decompressobj(32 + zlib.MAX_WBITS)  # detects a gzip or a zlib header


def _data_size(path: Path, offset: int, encoding: str) -> int:
    """Bytes of data in ``path`` from ``offset`` on (uncompressed bytes for a compressed encoding)."""
    if encoding == "raw":
        return max(path.stat().st_size - offset, 0)
    with open(path, "rb") as handle:
        handle.seek(offset)
        if encoding == "bzip2":
            return _inflated_size(_chunks(handle), bz2.BZ2Decompressor, "bzip2", BZIP2_MAGIC)
        return _inflated_size(_chunks(handle), _gzip_or_zlib, "gzip" if encoding == "gzip" else "zlib",
                              GZIP_MAGIC)


def _about(data_file: Path, header_file: Path, problem: Optional[str]) -> Problem:
    """A problem of a detached data file is reported with that file's name (it is the one to copy again)."""
    if problem is None or data_file == header_file:
        return problem
    return data_file, problem


def _shortfall(available: int, promised: int, shape: tuple[int, ...], voxel_type: str) -> Optional[str]:
    if available >= promised:
        return None
    size = "x".join(str(s) for s in shape)
    return (f"the header promises {size} voxels of {voxel_type} ({promised} bytes of data) but only {available} "
            f"bytes ({100 * available / promised:.1f} %) are there")


# --------------------------------------------------------------------------------------------
# NIfTI-1 and NIfTI-2
# --------------------------------------------------------------------------------------------
def _check_nifti(path: Path) -> Problem:
    compressed = path.name.lower().endswith(".gz")
    try:
        if compressed:
            with open(path, "rb") as handle:
                magic = handle.read(2)
                if magic != GZIP_MAGIC:
                    if magic and GZIP_MAGIC.startswith(magic):
                        return "the file ends inside its gzip header (1 byte)"
                    return None  # not gzip at all, so not a cut copy: ITK's error says what it is
                handle.seek(0)
                decompressor, inflated = _gzip_or_zlib(), b""
                for chunk in _chunks(handle):  # the header is in the first compressed bytes
                    inflated += decompressor.decompress(chunk, 540 - len(inflated))
                    if len(inflated) >= 540 or decompressor.eof:
                        break
                header = inflated
                if len(header) < 348 and not decompressor.eof:
                    # gzip, cut before a NIfTI header's worth of content (or inside its own header)
                    return (f"the gzip stream ends after {len(header)} bytes of content, inside the NIfTI header "
                            f"(at least 348 bytes)")
        else:
            with open(path, "rb") as handle:
                header = handle.read(540)
    except zlib.error as error:
        return f"the gzip stream is corrupt ({error})"
    if not compressed and 0 < len(header) < 4:
        return f"the file ends inside its NIfTI header ({len(header)} of at least 348 bytes)"
    stated = _stated_header_size(header)
    if stated is None:
        return None  # another kind of file under a NIfTI name: ITK's error says so
    if len(header) < stated:  # NIfTI-1 headers are 348 bytes, NIfTI-2 ones 540
        return f"the file ends inside its NIfTI header ({len(header)} of at least {stated} bytes)"
    parsed = _parse_nifti_header(header)
    if parsed is None:
        return None
    shape, bits_per_voxel, data_offset, datatype, single_file = parsed
    promised = math.prod(shape) * bits_per_voxel // 8
    data_file = path if single_file else _img_file_of(path)
    if data_file is None:
        return None
    offset = data_offset if single_file else 0
    try:
        if data_file.name.lower().endswith(".gz"):  # the offset counts decompressed bytes
            available = _data_size(data_file, 0, "gzip") - offset
        else:
            available = _data_size(data_file, offset, "raw")
    except StreamEndsEarly as error:
        return _about(data_file, path, str(error))
    return _about(data_file, path, _shortfall(available, promised, shape, f"NIfTI datatype {datatype}"))


def _stated_header_size(header: bytes) -> int | None:
    """The first field of a NIfTI-1/2 header is its own size, 348 or 540, in either byte order; None if
    ``header`` does not start like one."""
    if len(header) < 4:
        return None
    return next((size for endian in "<>" if (size := struct.unpack(endian + "i", header[:4])[0]) in (348, 540)),
                None)


def _parse_nifti_header(header: bytes):
    """(shape, bits per voxel, data offset, datatype, single file) or None if this is no NIfTI header."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", header[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", header[70:74])
            offset = struct.unpack(endian + "f", header[108:112])[0]
            magic = header[344:348]
            single_file = magic.startswith(b"n+1")
            break
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            datatype, bitpix = struct.unpack(endian + "2h", header[12:16])
            dims = struct.unpack(endian + "8q", header[16:80])
            offset = struct.unpack(endian + "q", header[168:176])[0]
            single_file = header[4:8].startswith(b"n+2")
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0 or any(d < 0 for d in dims[1:dims[0] + 1]) or not math.isfinite(offset):
        return None  # ITK reports a broken header itself
    # readers size a voxel by its datatype; bitpix is only a hint (and may disagree)
    bits = _NIFTI_DATATYPE_BITS.get(datatype, bitpix)
    return tuple(dims[1:dims[0] + 1]), bits, int(offset), datatype, single_file


# NIfTI datatype codes and their bits per voxel (nifti1.h)
_NIFTI_DATATYPE_BITS = {1: 1, 2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32,
                        1024: 64, 1280: 64, 1536: 128, 1792: 128, 2048: 256, 2304: 32}


def _img_file_of(header_path: Path) -> Optional[Path]:
    name = header_path.name
    stem = name[:-len(".hdr.gz")] if name.lower().endswith(".hdr.gz") else name[:-len(".hdr")]
    for ending in (".img", ".img.gz", ".IMG"):
        candidate = header_path.with_name(stem + ending)
        if candidate.is_file():
            return candidate
    return None


# --------------------------------------------------------------------------------------------
# NRRD and MetaImage: text headers
# --------------------------------------------------------------------------------------------
_NRRD_TYPES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"),
    2: ("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort", "unsigned short",
        "unsigned short int", "uint16", "uint16_t"),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: ("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64", "int64_t",
        "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t", "double"),
}
_NRRD_TYPE_SIZE = {name: size for size, names in _NRRD_TYPES.items() for name in names}
_NRRD_ENCODINGS = {"raw": "raw", "gzip": "gzip", "gz": "gzip", "bzip2": "bzip2", "bz2": "bzip2"}
_META_TYPE_SIZE = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                   "MET_DOUBLE": 8}
_MAX_HEADER = 1 << 26  # a header longer than this is not checked (DWI NRRDs can exceed 64 KiB)


def _header_lines(path: Path, last_line: Callable[[str], bool]) -> tuple[list[str], int]:
    """The text lines of a header up to the line where ``last_line`` holds, and the byte offset after
    it: -1 if the file ends first, -2 if the header goes on past ``_MAX_HEADER`` bytes."""
    lines, offset, pending = [], 0, b""
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw_line in complete:
                offset += len(raw_line) + 1
                line = raw_line.decode("latin-1").rstrip("\r")
                lines.append(line)
                if last_line(line):
                    return lines, offset
            if offset + len(pending) > _MAX_HEADER:
                return lines, -2
    return lines, -1


def _check_nrrd(path: Path) -> Problem:
    lines, data_offset = _header_lines(path, lambda line: line == "")
    if not lines or not lines[0].startswith("NRRD") or data_offset == -2:
        return None
    fields = {}
    for line in lines[1:]:
        if line.startswith("#") or ":=" in line or line == "":
            continue
        if ": " not in line:
            return None  # not a NRRD header line: a broken header rather than a cut one, ITK's to report
        key, value = line.split(": ", 1)
        fields[key.strip().lower().replace(" ", "")] = value.strip()
    data_file_field = fields.get("datafile")
    if not data_file_field and data_offset < 0:
        return "the file ends inside its header (no blank line before the data)"
    try:
        shape = tuple(int(s) for s in fields["sizes"].split())
        voxel_bytes = _NRRD_TYPE_SIZE[fields["type"].lower()]
        encoding = _NRRD_ENCODINGS[fields.get("encoding", "raw").lower()]
        byte_skip = int(fields.get("byteskip", 0))
        line_skip = int(fields.get("lineskip", 0))
    except (KeyError, ValueError):
        return None  # ascii/hex encodings, block types, odd headers: ITK's to judge
    if data_file_field:
        if data_file_field.startswith("LIST") or " " in data_file_field or "%" in data_file_field:
            return None  # several data files: not checked
        data_file, data_offset = path.parent / data_file_field, 0
        if not data_file.is_file():
            return f"its data file {data_file} is missing"
    else:
        data_file = path
    if byte_skip < 0 or line_skip:
        return None  # data located from the end of the file or after skipped lines: not checked
    promised = math.prod(shape) * voxel_bytes
    try:
        if encoding == "raw":
            available = _data_size(data_file, data_offset + byte_skip, "raw")
        else:  # NRRD's byte skip counts decompressed bytes
            available = _data_size(data_file, data_offset, encoding) - byte_skip
    except StreamEndsEarly as error:
        return _about(data_file, path, str(error))
    return _about(data_file, path, _shortfall(available, promised, shape, fields["type"]))


def _check_metaimage(path: Path) -> Problem:
    lines, data_offset = _header_lines(path, lambda line: line.replace(" ", "").lower().startswith("elementdatafile="))
    if data_offset == -2:
        return None
    fields = {}
    for line in lines:
        if "=" in line:
            key, value = line.split("=", 1)
            fields[key.strip().lower()] = value.strip()
    if "elementdatafile" not in fields:
        if {"objecttype", "ndims", "dimsize"} & set(fields):
            return "the file ends inside its header (no ElementDataFile line)"
        return None
    try:
        shape = tuple(int(s) for s in fields["dimsize"].split())
        voxel_bytes = _META_TYPE_SIZE[fields["elementtype"].upper()]
        channels = int(fields.get("elementnumberofchannels", 1))
        header_size = int(fields.get("headersize", 0))
    except (KeyError, ValueError):
        return None
    data_file_field = fields["elementdatafile"]
    if data_file_field.upper() == "LOCAL":
        data_file = path
    elif data_file_field.upper().startswith("LIST") or " " in data_file_field or "%" in data_file_field:
        return None
    else:
        data_file, data_offset = path.parent / data_file_field, 0
        if not data_file.is_file():
            return f"its data file {data_file} is missing"
    if header_size < 0 or fields.get("binarydata", "true").lower() == "false":
        return None  # data located from the end of the file, or written as text: not checked
    compressed = fields.get("compresseddata", "false").lower() == "true"
    promised = math.prod(shape) * voxel_bytes * channels
    try:
        available = _data_size(data_file, data_offset + header_size, "zlib" if compressed else "raw")
    except StreamEndsEarly as error:
        return _about(data_file, path, str(error))
    shape_text = shape + ((channels,) if channels > 1 else ())
    return _about(data_file, path, _shortfall(available, promised, shape_text, fields["elementtype"]))


_CHECKERS: tuple[tuple[str, Callable[[Path], Problem]], ...] = (
    (".nii.gz", _check_nifti), (".nii", _check_nifti), (".hdr", _check_nifti), (".hdr.gz", _check_nifti),
    (".nrrd", _check_nrrd), (".nhdr", _check_nrrd),
    (".mha", _check_metaimage), (".mhd", _check_metaimage),
)

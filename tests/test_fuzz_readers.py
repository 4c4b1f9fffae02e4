"""Fuzzing the readers: random and mutated bytes of PNG, NIfTI and DICOM files.

Whatever the bytes, reading them either works or raises :class:`MedshotError` (one line for the
user); anything else escaping would be a traceback. ``CASES`` cases per format and kind of input,
``3 x 2 x CASES`` in all; hypothesis is derandomised so that CI runs the same cases every time.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from medshot.core.errors import MedshotError
from medshot.data.image import from_array
from medshot.data.read import read_image, read_label_map

CASES = 700
FUZZ = settings(max_examples=CASES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
COUNT: dict[str, int] = {}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.arange(24 * 20) % 251).astype(np.uint8).reshape(24, 20)).save(buf, format="PNG")
    return buf.getvalue()


def _nifti() -> bytes:
    img = nib.Nifti1Image(np.arange(12 * 10 * 3, dtype=np.int16).reshape(12, 10, 3), np.diag([0.8, 0.9, 2.0, 1]))
    return img.to_bytes()


def _dicom() -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("seed.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Modality, ds.Rows, ds.Columns = "CT", 16, 12
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = np.arange(16 * 12, dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


SEEDS = {".png": _png(), ".nii": _nifti(), ".dcm": _dicom()}
# The images a label map is read for: a 2D image of the seeds' size, and the NIfTI seed's volume.
LIKE_2D = from_array(np.zeros((24, 20), np.float32))
LIKE_3D = from_array(np.zeros((12, 10, 3), np.float32), np.diag([0.8, 0.9, 2.0, 1]))


def read_all(tmp: Path, suffix: str, data: bytes) -> None:
    """Every reader a user's file meets; only MedshotError may come out."""
    path = tmp / f"case{suffix}"
    path.write_bytes(data)
    COUNT[suffix] = COUNT.get(suffix, 0) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for reader in (read_image, lambda p: read_label_map(p, LIKE_2D), lambda p: read_label_map(p, LIKE_3D)):
            try:
                reader(path)
            except MedshotError:
                pass


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """The seed with a few bytes overwritten, a slice removed or repeated, or cut short."""
    n = len(seed)
    flip = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 255)), min_size=1, max_size=8).map(
        lambda changes: _apply(seed, changes))
    cut = st.integers(0, n - 1).map(lambda k: seed[:k])
    splice = st.tuples(st.integers(0, n), st.integers(0, n)).map(
        lambda ab: seed[: min(ab)] + seed[max(ab):] if ab[0] % 2 else seed[: max(ab)] + seed[min(ab):])
    return st.one_of(flip, flip, cut, splice)


def _apply(seed: bytes, changes: list[tuple[int, int]]) -> bytes:
    b = bytearray(seed)
    for i, v in changes:
        b[i] = v
    return bytes(b)


@pytest.mark.parametrize("suffix", list(SEEDS))
def test_random_bytes_700_cases(suffix, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("random")

    @FUZZ
    @given(st.one_of(st.binary(max_size=600), st.binary(max_size=64).map(lambda b: SEEDS[suffix][:132] + b)))
    def check(data):
        read_all(tmp, suffix, data)

    before = COUNT.get(suffix, 0)
    check()
    print(f"{suffix}: {COUNT[suffix] - before} random inputs read")
    assert COUNT[suffix] - before >= CASES


@pytest.mark.parametrize("suffix", list(SEEDS))
def test_mutated_files_700_cases(suffix, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mutated")
    read_all(tmp, suffix, SEEDS[suffix])
    assert read_image(tmp / f"case{suffix}").array.size > 0  # the seed itself is a valid file

    @FUZZ
    @given(mutations(SEEDS[suffix]))
    def check(data):
        read_all(tmp, suffix, data)

    before = COUNT.get(suffix, 0)
    check()
    print(f"{suffix}: {COUNT[suffix] - before} mutated inputs read")
    assert COUNT[suffix] - before >= CASES

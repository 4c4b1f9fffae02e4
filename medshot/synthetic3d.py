"""Synthetic volumes with exact ground truth: a textured 3D phantom seen through known warps.

The phantom is a continuous function of world millimetres (a body, a bright shell, two labelled
organs, a bright rod, four landmark dots and a plane-wave texture), so it can be sampled on any
grid -- any spacing, field of view, slice count or axis orientation -- and through any warp, with
the label map and landmark positions known exactly in every sampling. Used by the tests and by the
memory benchmark (``sample_phantom`` works slab by slab, so a 512x512x300 CT-sized volume never
needs its coordinates in memory at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LANDMARK_NAMES_3D = ("apex", "left notch", "right notch", "base")


@dataclass
class Ellipsoid:
    center: np.ndarray  # mm
    radii: np.ndarray  # mm
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    def inside(self, p: np.ndarray) -> np.ndarray:
        q = (p - self.center) @ self.rotation
        return np.sum((q / self.radii) ** 2, axis=-1) <= 1.0


def _rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


@dataclass
class Phantom3D:
    """A head-like phantom centred at the world origin, about ``size`` mm across."""

    size: float = 48.0
    seed: int = 0

    def __post_init__(self):
        s = self.size / 2
        rng = np.random.default_rng(self.seed)
        self.body = Ellipsoid(np.zeros(3), np.array([0.85, 0.8, 0.85]) * s)
        self.shell_out = Ellipsoid(np.array([0, 0.05, 0]) * s, np.array([0.7, 0.65, 0.72]) * s)
        self.shell_in = Ellipsoid(np.array([0, 0.05, 0]) * s, np.array([0.6, 0.55, 0.62]) * s)
        self.organ1 = Ellipsoid(np.array([-0.27, 0.0, 0.08]) * s, np.array([0.17, 0.25, 0.2]) * s, _rot_z(20))
        self.organ2 = Ellipsoid(np.array([0.27, -0.1, -0.05]) * s, np.array([0.22, 0.15, 0.18]) * s, _rot_z(-15))
        self.rod = (np.array([0.0, -0.62]) * s, 0.08 * s)
        self.landmarks = np.array([[0.0, 0.55, 0.3], [-0.35, 0.35, -0.25], [0.33, 0.38, 0.28],
                                   [0.0, -0.35, -0.3]]) * s
        self.dot_radius = max(1.6, 0.045 * s)
        k = rng.normal(size=(14, 3))
        k /= np.linalg.norm(k, axis=1, keepdims=True)
        self.waves = k * (2 * np.pi / rng.uniform(0.2 * s, 0.45 * s, size=(14, 1)))
        self.phases = rng.uniform(0, 2 * np.pi, 14)

    def intensity(self, p: np.ndarray) -> np.ndarray:
        """Intensity in [0, 1] at world points ``(..., 3)`` mm."""
        v = np.zeros(p.shape[:-1], np.float32)
        body = self.body.inside(p)
        v[body] = 0.35
        v[self.shell_out.inside(p) & ~self.shell_in.inside(p)] = 0.9
        v[self.organ1.inside(p)] = 0.6
        v[self.organ2.inside(p)] = 0.15
        c, r = self.rod
        v[((p[..., 0] - c[0]) ** 2 + (p[..., 1] - c[1]) ** 2 <= r * r) & body] = 0.95
        for lm in self.landmarks:
            v[np.sum((p - lm) ** 2, axis=-1) <= self.dot_radius**2] = 1.0
        tex = np.zeros(p.shape[:-1], np.float32)
        for k, ph in zip(self.waves, self.phases):
            tex += np.cos(p @ k + ph).astype(np.float32)
        v += (0.05 / np.sqrt(len(self.phases))) * tex * body
        return np.clip(v, 0, 1)

    def labels(self, p: np.ndarray) -> np.ndarray:
        out = np.zeros(p.shape[:-1], np.uint8)
        out[self.organ1.inside(p)] = 1
        out[self.organ2.inside(p)] = 2
        return out


@dataclass
class Warp3D:
    """Backward map target world mm -> phantom world mm: affine plus a smooth sinusoidal field."""

    matrix: np.ndarray = field(default_factory=lambda: np.eye(3))
    shift: np.ndarray = field(default_factory=lambda: np.zeros(3))
    amplitude: float = 0.0  # mm
    wavelength: float = 60.0  # mm

    def __call__(self, p: np.ndarray) -> np.ndarray:
        q = p @ self.matrix.T + self.shift
        if self.amplitude:
            w = 2 * np.pi / self.wavelength
            q = q + self.amplitude * np.stack([np.sin(w * p[..., 1] + 0.3), np.sin(w * p[..., 2] + 1.1),
                                               np.sin(w * p[..., 0] + 2.0)], axis=-1)
        return q

    def inverse(self, q: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Target world points for phantom points ``(N, 3)`` (fixed-point iteration; the field is small)."""
        q = np.asarray(q, float).reshape(-1, 3)
        Ainv = np.linalg.inv(self.matrix)
        p = (q - self.shift) @ Ainv.T
        for _ in range(iterations):
            p = p - (self(p) - q) @ Ainv.T
        return p


def grid_affine(shape, spacing, center_mm=(0.0, 0.0, 0.0), axcodes: str = "RAS") -> np.ndarray:
    """Affine of a grid of ``shape`` voxels and ``spacing`` mm centred at ``center_mm``, axes along ``axcodes``.

    ``axcodes`` like ``"PLI"`` makes a non-canonical source orientation (array axis 0 points
    posterior, axis 1 left, axis 2 inferior).
    """
    dirs = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    A = np.zeros((4, 4))
    A[3, 3] = 1
    for col, code in enumerate(axcodes):
        axis, sign = dirs[code]
        A[axis, col] = sign * spacing[col]
    center_vox = (np.array(shape, float) - 1) / 2
    A[:3, 3] = np.asarray(center_mm, float) - A[:3, :3] @ center_vox
    return A


def sample_phantom(phantom: Phantom3D, shape, affine: np.ndarray, warp: Warp3D | None = None,
                   slab: int = 16, dtype=np.float32, scale: float = 1.0, offset: float = 0.0,
                   labels: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Sample the phantom (and its labels) on a voxel grid, slab by slab along the last axis.

    Returns ``(image * scale + offset as dtype, labels uint8 or None)`` in the grid's own array order.
    """
    shape = tuple(int(s) for s in shape)
    image = np.empty(shape, dtype)
    lab = np.empty(shape, np.uint8) if labels else None
    ii, jj = np.meshgrid(np.arange(shape[0], dtype=np.float64), np.arange(shape[1], dtype=np.float64),
                         indexing="ij")
    for k0 in range(0, shape[2], slab):
        k1 = min(shape[2], k0 + slab)
        kk = np.arange(k0, k1, dtype=np.float64)
        vox = np.stack(np.broadcast_arrays(ii[..., None], jj[..., None], kk[None, None, :]), axis=-1)
        p = vox @ affine[:3, :3].T + affine[:3, 3]
        if warp is not None:
            p = warp(p)
        image[:, :, k0:k1] = (phantom.intensity(p) * scale + offset).astype(dtype)
        if lab is not None:
            lab[:, :, k0:k1] = phantom.labels(p)
    return image, lab


def landmarks_voxel(phantom: Phantom3D, affine: np.ndarray, warp: Warp3D | None = None) -> np.ndarray:
    """The phantom's landmarks as voxel indices ``(N, 3)`` of a grid with ``affine`` (through ``warp``)."""
    world = phantom.landmarks if warp is None else warp.inverse(phantom.landmarks)
    return (world - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T


def write_dicom_series(array: np.ndarray, affine: np.ndarray, folder, slope: float = 1.0, intercept: float = 0.0,
                       shuffle_seed: int | None = 0, modality: str = "CT", series_uid: str | None = None) -> list:
    """Write a volume as a DICOM series: one file per ``array[:, :, k]`` (rows = i, columns = j).

    The array's layout is the one :func:`medshot.data.read.read_image` gives a DICOM series as its
    source array, ``(rows, columns, slices)``: the series reads back as ``array`` with ``affine``
    when ``array``'s third axis runs along the slice normal (the row direction crossed with the
    column direction, in which order readers stack the slices), else with that axis reversed.

    The geometry comes from ``affine`` (RAS, as for NIfTI): ImagePositionPatient,
    ImageOrientationPatient, PixelSpacing and SliceThickness are set in DICOM's LPS convention, and
    stored values are ``(array - intercept) / slope`` as uint16. With ``shuffle_seed`` the file
    names are random and unrelated to the slice order (InstanceNumber too), so a reader must sort
    by position. Returns the written paths in slice order.
    """
    from pathlib import Path

    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, float)
    row_step, col_step, slice_step = lps[:3, 0], lps[:3, 1], lps[:3, 2]  # down the rows, along a row
    dx, dy = float(np.linalg.norm(col_step)), float(np.linalg.norm(row_step))
    iop = list(col_step / dx) + list(row_step / dy)  # along a row, then down a column
    series_uid = series_uid or generate_uid()
    study_uid, frame_of_reference = generate_uid(), generate_uid()
    n = array.shape[2]
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    names = [f"slice_{k:04d}.dcm" for k in range(n)]
    instance = list(range(1, n + 1))
    if rng is not None:
        names = [f"{rng.integers(1 << 40):x}.dcm" for _ in range(n)]
        instance = list(rng.permutation(n) + 1)
    paths = []
    for k in range(n):
        stored = np.round((array[:, :, k] - intercept) / slope)  # rows = i, columns = j
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / names[k]), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.Modality = modality
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = "Phantom^Synthetic", "medshot-phantom", "", ""
        ds.FrameOfReferenceUID = frame_of_reference
        ds.InstanceNumber = int(instance[k])
        ds.ImagePositionPatient = [float(v) for v in lps[:3, 3] + k * slice_step]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [dy, dx]  # (between rows, between columns)
        ds.SliceThickness = float(np.linalg.norm(slice_step))
        ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.clip(stored, 0, 65535).astype(np.uint16).tobytes()
        ds.save_as(str(folder / names[k]), enforce_file_format=True)
        paths.append(folder / names[k])
    return paths

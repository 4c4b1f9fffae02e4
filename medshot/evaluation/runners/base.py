"""What the evaluation needs from a kind of data (2D images, 3D volumes): the :class:`Runner` interface.

Everything that differs between images and volumes -- how a case is read, which segmenters and
baselines exist, how the template and the medshot object are built, how one target is run, how a
prediction is stored and shown -- sits behind this interface; discovery, planning, scoring, the
store and the report are written once. When 2D and 3D share one ``OneShot`` the two runners become
one.

Array space: a runner gives label maps and points in the *target file's own array*: 2D
``(rows, columns)``; 3D source voxel ``(i, j, k)`` (the NIfTI data array's axis order, not the
canonical one medshot matches on), so predictions line up with the ground truth files and the
landmark CSVs as written.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cases import Case, Entry


@dataclass
class Prediction:
    """One method's output on one target, in the target's array space.

    Attributes
    ----------
    label_map : ndarray of int, shape = target.shape, or None
        Predicted labels (0 = background).
    scores : dict of int to float
        Per-label confidence the method reports (may be empty).
    points : dict of str to ndarray, shape (ndim,)
        Predicted landmarks by name, array-axis order (2D ``(row, col)``, 3D ``(i, j, k)``).
    confidence : dict of str to float
        Per-landmark confidence.
    """

    label_map: np.ndarray | None = None
    scores: dict[int, float] = field(default_factory=dict)
    points: dict[str, np.ndarray] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)


@dataclass
class View:
    """A 2D picture of one case for the report.

    ``image`` is ``(H, W)`` in [0, 1]; ``label_map`` and ``truth`` are ``(H, W)`` label maps on
    the same pixels (or None). ``note`` says which slice of a volume is shown.
    """

    image: np.ndarray
    label_map: np.ndarray | None = None
    truth: np.ndarray | None = None
    note: str = ""


class Runner(ABC):
    """One kind of data (see the module docstring).

    Parameters
    ----------
    window : (low, high), optional
        Intensity window (e.g. CT HU) for matching and pictures; default robust percentiles.
    work_size : int
        Longest side of the 2D matching grid (pixels); volumes use the volume pipeline's own grids.

    Attributes
    ----------
    kind : str
        ``"2d"`` or ``"3d"``.
    point_columns : dict of str to int
        cases.csv coordinate column suffix -> array axis (``pred_<suffix>``, ``true_<suffix>``).
    element : str
        Unit word of array distances in tables (``"px"`` or ``"voxels"``).
    prediction_suffix : str
        File suffix of stored predicted label maps.
    """

    kind = ""
    point_columns: dict[str, int] = {}
    element = "px"
    prediction_suffix = ".png"

    def __init__(self, window: tuple[float, float] | None = None, work_size: int = 256):
        self.window = window
        self.work_size = int(work_size)

    # -- data ----------------------------------------------------------------------------------

    @abstractmethod
    def read_case(self, entry: Entry) -> Case:
        """Read and check one listed case (one-line :class:`MedshotError` naming the file if bad)."""

    @abstractmethod
    def truth(self, case: Case) -> np.ndarray:
        """The case's ground-truth label map, ``case.shape``."""

    @abstractmethod
    def truth_points(self, case: Case) -> dict[str, np.ndarray]:
        """The case's ground-truth landmarks by name, array-axis order, in the case's listed order."""

    # -- methods -------------------------------------------------------------------------------

    @abstractmethod
    def segmenter_names(self) -> list[str]:
        """Segmenters this kind offers (what ``all`` expands to)."""

    @abstractmethod
    def segmenter_status(self, name: str) -> tuple[bool, str]:
        """Whether a segmenter named by the user runs on this kind here, and why not."""

    @abstractmethod
    def baseline_names(self) -> tuple[str, ...]:
        """Baselines this kind offers."""

    @abstractmethod
    def baseline_status(self, name: str) -> tuple[bool, str]:
        """Whether a known baseline runs on this kind here, and why not."""

    # -- running -------------------------------------------------------------------------------

    @abstractmethod
    def make_template(self, case: Case, label_names: dict[int, str]) -> Any:
        """The template of one case: its image, mask (every label) and landmarks."""

    @abstractmethod
    def template_labels(self, template: Any) -> dict[int, str]:
        """The template's labels and their names."""

    @abstractmethod
    def make_shot(self, template: Any, backbone: str, segmenter: str) -> Any:
        """The medshot object for one template and backbone/segmenter (built once, run on every target)."""

    @abstractmethod
    def predict(self, shot: Any, target: Case, landmarks: bool, masks: bool, baseline: str | None) -> Prediction:
        """Run one target (timed by the caller: loading the target is part of it)."""

    @abstractmethod
    def save_prediction(self, path: Path, prediction: Prediction, target: Case) -> None:
        """Store a predicted label map at ``path`` (suffix :attr:`prediction_suffix`)."""

    @abstractmethod
    def view(self, target: Case, prediction_file: Path | None) -> View:
        """A 2D picture of a target with its stored prediction and its truth."""

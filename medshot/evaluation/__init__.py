"""``medshot evaluate``: score medshot and registration baselines on a labelled dataset of images or volumes.

Modules (each one job; import them directly, this package imports nothing on its own):

- :mod:`.metrics`: Dice, HD95 (pixels/voxels or mm), point distances, NED -- any number of dimensions.
- :mod:`.cases`: the dataset's data classes (:class:`~.cases.Case`, :class:`~.cases.Dataset`).
- :mod:`.dataset`: discovery of folder layouts and manifests; 2D or 3D per dataset.
- :mod:`.runner`: reading a case, building the template and the :class:`~medshot.pipeline.OneShot`,
  running one target with medshot or a baseline, storing and picturing a prediction (images and
  volumes alike; only the coordinate columns and file formats differ).
- :mod:`.baselines`: the registration baselines on medshot's working grids.
- :mod:`.plan`: templates, splits, methods and the (template, target, method) plan.
- :mod:`.scoring`: one prediction against the truth -> cases.csv rows.
- :mod:`.store`: cases.csv append / read / resume.
- :mod:`.memory`: the per-case peak-memory probe.
- :mod:`.run`: :func:`~.run.run_evaluation` and the command-line entry.
- :mod:`.report`: statistics, plots and report.html from cases.csv.
"""

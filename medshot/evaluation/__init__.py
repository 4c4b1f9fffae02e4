"""``medshot evaluate``: score medshot and registration baselines on a labelled dataset of images or volumes.

Modules (each one job; import them directly, this package imports nothing on its own):

- :mod:`.metrics`: Dice, HD95 (pixels/voxels or mm), point distances, NED -- any number of dimensions.
- :mod:`.cases`: the dataset's data classes (:class:`~.cases.Case`, :class:`~.cases.Dataset`).
- :mod:`.dataset`: discovery of folder layouts and manifests; 2D or 3D per dataset.
- :mod:`.runners`: what differs between images and volumes (read a case, build template and
  medshot object, run one target, store and picture a prediction).
- :mod:`.plan`: templates, splits, methods and the (template, target, method) plan.
- :mod:`.scoring`: one prediction against the truth -> cases.csv rows.
- :mod:`.store`: cases.csv append / read / resume.
- :mod:`.memory`: the per-case peak-memory probe.
- :mod:`.run`: :func:`~.run.run_evaluation` and the command-line entry.
- :mod:`.report`: statistics, plots and report.html from cases.csv.
"""

"""medshot in napari: a reader, writers, a template panel and a run panel (``pip install "medshot[napari]"``).

The npe2 manifest ``napari.yaml`` (plugin name ``medshot``) lists them. :mod:`.layers` (no Qt)
decides how medshot's images, templates and results become napari layers and back;
:mod:`.reader` and :mod:`.writer` are the file hooks; :mod:`.template_panel` and
:mod:`.run_panel` are the dock widgets; :mod:`.runner` (no Qt) runs targets for the run panel;
:mod:`.annotate` is ``medshot annotate``.

Importing this package imports neither napari nor Qt.
"""

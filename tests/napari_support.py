"""Shared by the napari tests (imported after ``pytest.importorskip("napari")``)."""

from __future__ import annotations

from pathlib import Path

import medshot.napari

MANIFEST = Path(medshot.napari.__file__).parent / "napari.yaml"


def register_plugin() -> None:
    """Make sure napari knows the ``medshot`` plugin.

    An installed medshot registers it through its ``napari.manifest`` entry point; a source tree run
    with ``PYTHONPATH`` (and an older install elsewhere) registers the manifest file directly.
    """
    from npe2 import PluginManager, PluginManifest

    pm = PluginManager.instance()
    if "medshot" not in pm:
        pm.register(PluginManifest.from_file(MANIFEST))


def add_layers(viewer, layer_data) -> list:
    """Add ``(data, kwargs, type)`` tuples as a reader returns them; returns the layers."""
    return [getattr(viewer, f"add_{kind}")(data, **kwargs) for data, kwargs, kind in layer_data]


def open_panel(viewer, path, panel_class):
    """Open ``path`` with the medshot reader and dock a new ``panel_class`` panel on ``viewer``."""
    viewer.open(str(path), plugin="medshot")
    panel = panel_class(viewer)
    viewer.window.add_dock_widget(panel)
    return panel

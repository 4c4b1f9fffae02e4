"""``medshot annotate``: napari with medshot's template and run panels, or a headless screenshot of it.

With ``--screenshot PNG`` nothing waits for a user: the viewer opens with the panels (on a virtual
display when there is none: Xvfb is started for the run and stopped after), runs the ``--targets``
if any and shows the weakest, saves a picture of the whole window and exits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from ..core.errors import MedshotError

INSTALL_HINT = 'napari is not installed; `pip install "medshot[napari]"` adds it'
WINDOW_SIZE = (1500, 940)


def add_annotate_parser(sub) -> None:
    """The ``medshot annotate`` sub-command's arguments (``sub``: argparse sub-parsers)."""
    p = sub.add_parser("annotate", help='annotate a template and review results in napari '
                                        '(pip install "medshot[napari]")')
    p.add_argument("image", nargs="?", help="image or volume to annotate (a file medshot reads, or a DICOM series "
                                            "folder)")
    p.add_argument("--template", help="template JSON to open and edit (its image, landmarks, prompts and label map)")
    p.add_argument("--targets", nargs="+", metavar="TARGET", help="targets (files or folders) for the run panel")
    p.add_argument("--out", help="output folder of the run panel")
    p.add_argument("--screenshot", metavar="PNG", help="headless: open the viewer with the panels, run --targets if "
                                                       "given, save a screenshot of the window to PNG and exit")


def annotate(image: str | None = None, template: str | None = None, targets: list[str] | None = None,
             out: str | None = None, screenshot: str | None = None) -> int:
    """Open the viewer (see the module docstring); returns the exit status.

    Raises
    ------
    MedshotError
        napari missing, an unreadable image or template, an image that is not the template's, no
        display for a screenshot.
    """
    from .reader import read_or_error, read_template

    if image is None and template is None:
        raise MedshotError("give an image or volume to annotate, or --template")
    if template is not None:
        layers = read_template(template)
        source = layers[0][1]["metadata"]["medshot"]["frame"].path
        if image is not None and Path(image).resolve() != Path(source).resolve():
            raise MedshotError(f"is not the image of template {template} ({source}); give one or the other", image)
    else:
        layers = read_or_error(image)
    try:
        import napari
    except ImportError as exc:
        raise MedshotError(INSTALL_HINT) from exc
    display = _ensure_display() if screenshot else None
    try:
        viewer = napari.Viewer(title="medshot", show=True)
        panels = _setup(viewer, layers, image, template, targets, out)
        if screenshot is None:
            napari.run()
            return 0
        return _screenshot(viewer, panels, Path(screenshot), bool(targets))
    finally:
        if display is not None:
            display.terminate()
            display.wait(timeout=10)


def _setup(viewer, layers, image, template, targets, out):
    from .run_panel import RunPanel
    from .template_panel import TemplatePanel

    for data, kwargs, kind in layers:
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    template_panel, run_panel = TemplatePanel(viewer), RunPanel(viewer)
    template_dock = viewer.window.add_dock_widget(template_panel, name="medshot template", area="right")
    run_dock = viewer.window.add_dock_widget(run_panel, name="medshot run", area="right", tabify=True)
    template_panel.template_saved.connect(run_panel.set_template)
    if template is None and image is not None and not template_panel.path_edit.text():
        from .reader import _stem

        template_panel.path_edit.setText(str(Path(image).parent / f"{_stem(Path(image))}_template.json"))
    if targets:
        run_panel.set_targets(targets)
    if out:
        run_panel.set_output(out)
    return template_panel, run_panel, template_dock, run_dock


def _screenshot(viewer, panels, path: Path, run: bool) -> int:
    from qtpy.QtCore import QEventLoop
    from qtpy.QtWidgets import QApplication

    template_panel, run_panel, dock, run_dock = panels
    # napari has no public resize; a fixed size makes screenshots comparable.
    viewer.window._qt_window.resize(*WINDOW_SIZE)
    if run:
        loop = QEventLoop()
        run_panel.run_finished.connect(loop.quit)
        run_panel.run()
        loop.exec()
        dock = run_dock
    else:
        template_panel.ensure_layers()
    viewer.reset_view()
    for i in range(40):  # let Qt lay out and paint the docks before grabbing the window
        QApplication.processEvents()
        if i == 10:
            dock.raise_()  # the panel to show, once its tab exists
        time.sleep(0.01)
    path.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    viewer.close()
    print(f"wrote {path}")
    return 0


def _ensure_display() -> subprocess.Popen | None:
    """A display for Qt's OpenGL canvas: the current one, or an Xvfb started here (returned, to be stopped)."""
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        # Qt's offscreen platform has no OpenGL context, so napari's canvas cannot draw there.
        os.environ["QT_QPA_PLATFORM"] = "xcb"
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise MedshotError("--screenshot needs a display: none is set and Xvfb is not installed "
                           "(e.g. `apt-get install xvfb`)")
    number = next(n for n in range(99, 999) if not Path(f"/tmp/.X{n}-lock").exists())
    proc = subprocess.Popen([xvfb, f":{number}", "-screen", "0", "1600x1000x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socket = Path(f"/tmp/.X11-unix/X{number}")
    deadline = time.monotonic() + 15
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise MedshotError(f"could not start Xvfb on display :{number} for the screenshot")
        time.sleep(0.05)
    os.environ["DISPLAY"] = f":{number}"
    return proc

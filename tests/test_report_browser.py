"""The ``medshot evaluate`` report page in a real headless browser: no console errors, every image shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser import check_page, chromium_or_skip
from PIL import Image
from test_evaluate_command import evaluate, make_dataset


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip()


@pytest.fixture(scope="module")
def report(chromium, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    out = root / "report"
    assert evaluate("--data", make_dataset(root / "ds"), "--out", out, "--backbones", "classical",
                    "--baselines", "identity") == 0
    return out


def test_report_page_loads_without_errors_and_displays_its_images(report, chromium, tmp_path):
    shot = tmp_path / "page.png"
    check = check_page(report / "report.html", chromium, screenshot=shot)
    assert check.errors == []
    pictures = {p.name: Image.open(p).size[0] for p in report.glob("*.png") if p.name != "table.png"}
    assert len(pictures) == 6  # box and template plots of Dice and NED, the overlays, the reliability diagram
    # each embedded picture decoded at the width of the PNG beside the page
    assert sorted(check.images) == sorted((name, True, width) for name, width in pictures.items())
    assert Image.open(shot).size[0] == 1200


def test_the_check_sees_broken_images_and_script_errors(report, chromium, tmp_path):
    page = (report / "report.html").read_text()
    broken, n = re.subn(r'(src="data:image/png;base64,)[^"]{20}', r"\1AAAA", page, count=1)
    assert n == 1
    broken = broken.replace("</body>", "<script>console.error('boom'); undefinedCall();</script></body>")
    (tmp_path / "broken.html").write_text(broken)
    check = check_page(tmp_path / "broken.html", chromium)
    assert any("boom" in e for e in check.errors) and any("undefinedCall" in e for e in check.errors)
    assert [ok for _, ok, width in check.images if width == 0] == [True]  # settled (failed), nothing shown

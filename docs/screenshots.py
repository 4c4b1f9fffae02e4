"""Make the pictures in docs/: the evaluate report page (headless Chromium) and three medshot overlays.

    PYTHONPATH=$PWD python docs/screenshots.py [--data ../shared/evaldata] [--out docs]

Needs the evaldata folder (``--data`` or ``MEDSHOT_EVALDATA``), Playwright and a Chromium
(``tests/browser.py`` finds it). Writes, each a palette PNG under 300 KB:

- ``report_page.png``: ``report.html`` of ``medshot evaluate`` on five hippocampus MR
  slices (first case the template; medshot, identity and affine);
- ``overlay_legend.png``: ``medshot segment`` on a hippocampus MR slice (labels named in a legend);
- ``localize_overlay.png``: ``medshot localize`` on a cephalogram (19 numbered landmarks, legend);
- ``volume_overlay.png``: ``medshot segment`` on a hippocampus MR volume (three planes through a structure).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image

from medshot.cli import main as medshot

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 300_000


def save_small(src: Path, dst: Path, max_width: int = 1100) -> None:
    """``src`` as a palette PNG at most ``max_width`` wide, checked to stay under :data:`LIMIT` bytes."""
    im = Image.open(src).convert("RGB")
    if im.width > max_width:
        im = im.resize((max_width, round(im.height * max_width / im.width)), Image.LANCZOS)
    elif max_width // im.width >= 2:  # a small slice: whole pixels enlarged, so the picture stays sharp
        k = max_width // im.width
        im = im.resize((im.width * k, im.height * k), Image.NEAREST)
    im.quantize(colors=96, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
    size = dst.stat().st_size
    if size > LIMIT:
        raise SystemExit(f"{dst}: {size} bytes, over the {LIMIT} byte limit")
    print(f"wrote {dst} ({im.width}x{im.height}, {size // 1000} KB)")


def link_cases(src: Path, dst: Path, names: list[str], folders=("images", "masks")) -> Path:
    """A dataset of ``names`` from ``src`` (symbolic links), with its label names."""
    for folder in folders:
        (dst / folder).mkdir(parents=True)
        for name in names:
            (dst / folder / name).symlink_to(src / folder / name)
    shutil.copy(src.parent / "label_names.csv", dst / "label_names.csv")
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path(os.environ.get("MEDSHOT_EVALDATA", ROOT / "../shared/evaldata")))
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from browser import check_page, find_chromium

    chromium = find_chromium()
    if not args.data.is_dir() or chromium is None:
        print(f"needs {args.data} and a Chromium; nothing written")
        return 0
    hip2d = args.data / "mr_hippocampus_msd" / "slices2d"
    hip3d = args.data / "mr_hippocampus_msd" / "volumes"
    ceph = args.data / "xray_ceph_landmarks_hamedan"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = sorted(p.name for p in (hip2d / "images").iterdir())[:5]
        data = link_cases(hip2d, tmp / "evaldata" / "hippocampus_slices", names)
        report = tmp / "report"
        assert medshot(["evaluate", "--data", str(data), "--out", str(report), "--baselines", "identity,affine",
                        "--quiet"]) == 0
        check = check_page(report / "report.html", chromium, screenshot=tmp / "page.png", width=1100)
        assert not check.errors and all(w > 0 for _, _, w in check.images), check
        save_small(tmp / "page.png", args.out / "report_page.png", 800)

        # a 2D segmentation: template = first slice with its mask, target = the second
        template = tmp / "t2d.json"
        label_names = hip2d.parent / "label_names.csv"
        assert medshot(["template", str(hip2d / "images" / names[0]), "--mask", str(hip2d / "masks" / names[0]),
                        "--label-names", str(label_names), "--out", str(template)]) == 0
        assert medshot(["segment", "--template", str(template), "--out", str(tmp / "seg2d"),
                        str(hip2d / "images" / names[1]), "--quiet"]) == 0
        save_small(tmp / "seg2d" / f"{Path(names[1]).stem}_overlay.png", args.out / "overlay_legend.png", 1000)

        # landmarks on a cephalogram: template ceph_001 and its 19 landmarks, target the next image
        cephs = sorted(p.name for p in (ceph / "images").iterdir())[:2]
        template = tmp / "ceph.json"
        abbrev = {r["landmark_id"]: r["abbrev"] for r in csv.DictReader(open(ceph / "landmark_names.csv"))}
        points = tmp / "ceph_points.csv"
        with open(ceph / "landmarks.csv") as fh:
            points.write_text("name,x,y\n" + "".join(f"{abbrev[r['landmark_id']]},{r['x']},{r['y']}\n"
                                                    for r in csv.DictReader(fh) if r["image"] == cephs[0]))
        assert medshot(["template", str(ceph / "images" / cephs[0]), "--landmarks", str(points),
                        "--out", str(template)]) == 0
        assert medshot(["localize", "--template", str(template), "--out", str(tmp / "loc"),
                        str(ceph / "images" / cephs[1]), "--quiet"]) == 0
        save_small(tmp / "loc" / f"{Path(cephs[1]).stem}_overlay.png", args.out / "localize_overlay.png", 700)

        # a volume: template hippocampus_001 with its labels, target the next volume
        vols = sorted(p.name for p in (hip3d / "images").iterdir())[:2]
        masks = hip3d / ("masks" if (hip3d / "masks").is_dir() else "labels")
        template = tmp / "t3d.json"
        assert medshot(["template", str(hip3d / "images" / vols[0]), "--mask", str(masks / vols[0]),
                        "--label-names", str(label_names), "--out", str(template)]) == 0
        assert medshot(["segment", "--template", str(template), "--out", str(tmp / "seg3d"),
                        str(hip3d / "images" / vols[1]), "--quiet"]) == 0
        stem = vols[1].removesuffix(".nii.gz")
        save_small(sorted((tmp / "seg3d").glob(f"{stem}_label*_overlay.png"))[0], args.out / "volume_overlay.png",
                   900)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How many of pydicom's own test files medshot's DICOM reader can decode, with and without the
``dicom`` extra's decoders (docs/dicom.md quotes the output).

    python benchmarks/dicom_corpus.py            # with whatever decoders are installed
    python benchmarks/dicom_corpus.py --without  # as a base install: the extra's decoder modules hidden

Counts the files in pydicom's packaged test-file folder that hold pixel data, and how many of
them ``medshot.data.dicom.dicom_pixels`` decodes, per transfer syntax.
"""

from __future__ import annotations

import argparse
import collections
import importlib.abc
import sys
from pathlib import Path

HIDDEN = ("pylibjpeg", "openjpeg", "rle", "libjpeg", "jpeg_ls", "gdcm", "highdicom")


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ImportError(f"hidden: {name}")
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--without", action="store_true", help="hide the dicom extra's decoders")
    args = ap.parse_args()
    if args.without:
        sys.meta_path.insert(0, _Hide())
    import pydicom

    from medshot.data.dicom import dicom_pixels

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    tally: dict = collections.defaultdict(lambda: [0, 0])
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(str(f))
        except Exception:  # noqa: BLE001 - not DICOM (or deliberately broken): not counted
            continue
        if "PixelData" not in ds:
            continue
        name = ds.file_meta.TransferSyntaxUID.name if "TransferSyntaxUID" in getattr(ds, "file_meta", {}) else "?"
        tally[name][0] += 1
        try:
            dicom_pixels(ds, f)
            tally[name][1] += 1
        except Exception:  # noqa: BLE001 - counted as not read
            pass
    total = [sum(v[0] for v in tally.values()), sum(v[1] for v in tally.values())]
    for name, (n, ok) in sorted(tally.items()):
        print(f"{name:45s} {ok:3d} / {n:3d}")
    print(f"{'all files with pixel data':45s} {total[1]:3d} / {total[0]:3d}")


if __name__ == "__main__":
    main()

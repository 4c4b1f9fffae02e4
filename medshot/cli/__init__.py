"""The command line: ``medshot template | localize | segment | select | check | demo | backbones | annotate``
(and ``evaluate``).

:mod:`.main` holds the parser and the dispatch; each command group has its module (:mod:`.template`,
:mod:`.run` for ``localize`` and ``segment``, :mod:`.check`, :mod:`.demo`, :mod:`.backbones`, :mod:`.annotate`,
:mod:`.evaluate`); :mod:`.batch` and :mod:`.outdir` are the batch loop and its output folder. 2D
images and volumes go through the same code: what differs is only what the files hold (landmark
table columns, overlays).
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]

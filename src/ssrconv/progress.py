"""The one progress bar of ssrconv (tqdm, on stderr), for every long step: reading faces,
predict over directories, eval, parity, calibration and distillation.

A bar is drawn only when stderr is a terminal: in CI logs, pipes and files nothing is written
(tqdm's ``disable=None``), so logs keep their one line per step and no carriage-return noise.
``SSRCONV_PROGRESS=0`` turns bars off on a terminal too, ``=1`` forces them on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def enabled() -> bool | None:
    """tqdm's ``disable`` argument: None (auto: a TTY only), or forced by SSRCONV_PROGRESS."""
    value = os.environ.get("SSRCONV_PROGRESS")
    if value == "0":
        return True
    if value == "1":
        return False
    return None


def bar(total: int | None = None, desc: str = "", unit: str = "it"):
    """A manual bar (``update(n)``, ``set_postfix_str``, ``close``), for steps that report
    their own counts (e.g. distillation batches)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=enabled(),
                leave=False, dynamic_ncols=True)


def progress(items: Iterable[T], desc: str = "", unit: str = "it", total: int | None = None) -> Iterator[T]:
    """``items``, with a bar counting them while they are consumed."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(total=total, desc=desc, unit=unit) as b:
        for item in items:
            yield item
            b.update(1)

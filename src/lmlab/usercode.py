"""Calling functions the user wrote (`--scorer mod:fn`, `--reward python:mod:fn`).

An exception inside such a function is the user's to fix, so it becomes one `LmlabError` naming the
function and the input it failed on; the original stays chained for anyone who wants its traceback.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from typing import Any

from lmlab.errors import LmlabError

_short = reprlib.Repr()
_short.maxstring = 80  # enough to recognise the input, short enough for one error line
_short.maxother = 80
_short.maxlist = _short.maxtuple = _short.maxdict = 4


def call_user(fn: Callable[..., Any], name: str, *args: Any) -> Any:
    """`fn(*args)`; any Exception it raises is re-raised as an LmlabError naming `name` and the input."""
    try:
        return fn(*args)
    except Exception as e:
        shown = ", ".join(_short.repr(a) for a in args)
        raise LmlabError(f"{name} raised {type(e).__name__}: {_one_line(e)} on input ({shown})") from e


def _one_line(e: Exception, limit: int = 200) -> str:
    # The CLI prints an error as one line; a multi-line or huge message would break that.
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""One exception type for problems the user can fix.

The CLI prints an `LmlabError` as a single line (`lmlab: error: ...`) and exits
non-zero; anything else is a bug and keeps its traceback.
"""


class LmlabError(Exception):
    """Bad input: a file, key or value that is wrong, and what was expected."""

"""The package's own error types (torch-free, numpy-free).

``TrmError`` is a ``ValueError`` so that existing ``except ValueError`` code
keeps working; the ``trm`` command prints any of them as one line, exit code 2.
"""

from __future__ import annotations


class TrmError(ValueError):
    """Bad input or an unsafe request, worded for the user (one line, naming the file)."""


class UnsafeOutputError(TrmError):
    """An output that trmcore refuses to write: a symbolic link, an input of the command, a foreign folder."""


class UnsafeFileError(TrmError):
    """A file that trmcore refuses to read because reading it could run code (a pickle), or is not what it claims."""

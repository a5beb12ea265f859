"""Errors of the demo builder."""

from __future__ import annotations


class DemoSourceError(FileNotFoundError):
    """A source the demo needs (recorded voices, espeak-ng, an image set) is not installed.

    The message names what is missing and the package that provides it.
    """

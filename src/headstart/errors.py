"""Exceptions raised by headstart. Every message names the problem and the fix."""

from __future__ import annotations


class HeadstartError(Exception):
    """Base class of every error headstart raises on purpose."""


class DataError(HeadstartError, ValueError):
    """The data given cannot be used as it is (empty class, unreadable path, bad column...)."""


class BackboneError(HeadstartError, ValueError):
    """A backbone name is unknown or its weights cannot be found."""


class WeightsUnavailableError(BackboneError):
    """Pretrained weights are needed but cannot be had offline."""


class RunFolderError(HeadstartError, ValueError):
    """A run folder is missing files or was written by an incompatible version."""

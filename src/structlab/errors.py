"""Errors that the command line shows as one clear line (no traceback unless ``--debug``)."""

from __future__ import annotations


class StructlabError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""


class DataNotFoundError(StructlabError, FileNotFoundError):
    """A data set could not be found, downloaded or generated."""


class ChecksumError(StructlabError):
    """A file's content differs from its recorded checksum."""

"""The errors seglab raises for bad input.

Each message names the file (or config key) and says what was expected, so a user can fix the input
without reading a traceback.
"""

from __future__ import annotations


class SeglabError(Exception):
    """Base class of all seglab input errors."""


class DatasetError(SeglabError):
    """A dataset root, split list, image or label file is missing or malformed."""


class ConfigError(SeglabError, ValueError):
    """A config file or option has an unknown key, a wrong type or a bad value (also a ValueError)."""


class CheckpointError(SeglabError):
    """A weights file is missing, unsafe, or does not match the model."""


class TrainingError(SeglabError):
    """A run cannot go on (a non-finite loss, a data worker that died); the message names the iteration
    and the last good checkpoint, which is kept."""


class StorageError(SeglabError, OSError):
    """A file could not be written (a full disk, an I/O error, a read-only folder); the message names the path
    and the free space, and the file that was there before is intact."""


class Preempted(SeglabError):
    """Training stopped on SIGTERM or SIGINT after writing a resumable state; ``--resume`` continues it.
    The CLI exits with :data:`PREEMPTED_EXIT_CODE`."""


PREEMPTED_EXIT_CODE = 75  # sysexits' EX_TEMPFAIL: "a temporary failure, retry later"; distinct from errors' 2

"""fastnn's exception types."""


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run here; the message says what is missing and what to install."""


class FormatError(ValueError):
    """A file fastnn was asked to load is not a valid fastnn file."""


class OutOfMemoryError(MemoryError):
    """The device ran out of memory; the message names the sizes involved and the remedies."""


class FolderInUseError(RuntimeError):
    """A checkpoint folder is locked by another live run; the message names its process."""


class CheckpointMismatchError(ValueError):
    """A checkpoint belongs to a different run (architecture, optimizer, data or seed differ); the
    message names what differs and how to start fresh."""

"""fastnn's exception types."""


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run here; the message says what is missing and what to install."""


class FormatError(ValueError):
    """A file fastnn was asked to load is not a valid fastnn file."""


class OutOfMemoryError(MemoryError):
    """The device ran out of memory; the message names the sizes involved and the remedies."""

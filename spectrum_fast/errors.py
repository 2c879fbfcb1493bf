"""User-facing errors.

Every problem with the user's input (a path, a file, a tensor, an option) is raised as a
``SpectrumFastError`` whose message is one line that names the thing and says what to do. The CLI
prints that line and exits non-zero; library users can catch the one class.
"""


class SpectrumFastError(Exception):
    """Bad input: the message names the file or tensor and says what to do."""


class SourceError(SpectrumFastError):
    """The weights could not be found or read."""


class SelectionError(SpectrumFastError):
    """A type filter, a percentage or a result file that cannot be used."""

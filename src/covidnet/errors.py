"""The one base of every failure the package reports to a person.

Each stage raises its own subclass (``ParamsError``, ``ManifestError``, ``TrainDataError``,
...) with a message that names the file, the field and the rule, and the offending value;
the ``covidnet`` command catches :class:`CovidnetError` alone, prints that message and exits
with status 2. Anything else is a bug and keeps its traceback.
"""


class CovidnetError(Exception):
    """A known failure with a message for the user (file, field, rule, value)."""


class InputError(CovidnetError, ValueError):
    """A command's argument or an input table breaks a rule (the message names it and the value)."""


class MissingInputError(CovidnetError, FileNotFoundError):
    """An input file or folder a stage needs does not exist (the message names the path)."""

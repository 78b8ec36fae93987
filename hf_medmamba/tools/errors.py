"""The error of the conversion tools: a checkpoint, a label source or an output folder that cannot be converted."""


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message says what was found and what was expected."""

"""The one error of this package's conversions: a checkpoint or model one side cannot express."""

from transformer.errors import UserError


class InteropError(UserError, ValueError):
    """A config or weight the conversion cannot carry over exactly; the message says which."""

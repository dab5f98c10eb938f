"""`UserError`: the one base class of every error a user can cause and fix.

A missing file, a misspelled config key, a corrupt checkpoint or an impossible generation request
deserves one line that says what to do, not a traceback. Every such error in the package derives
from `UserError`; the command line catches it in one place (transformer/commands/main.py) and prints
it as `transformer COMMAND: error: ...` with exit status 2. Anything else is a bug and keeps its
traceback. This module imports nothing, so every layer of the package may use it.
"""


class UserError(Exception):
    """A request that cannot be carried out as given; the message says why and what to do."""

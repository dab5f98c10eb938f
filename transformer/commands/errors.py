"""`CommandError`: a request the command line itself refuses (a bad combination of options).

Like every `UserError` it is one line on stderr and exit status 2, printed by the one handler
in transformer/commands/main.py; the commands only raise it.
"""

from transformer.errors import UserError


class CommandError(UserError):
    """A request that cannot be carried out as given; a one-line message that says why."""

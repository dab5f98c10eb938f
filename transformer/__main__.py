"""`python -m transformer ...` is the same as the `transformer` console script (torchrun uses it)."""

import sys

from transformer.commands.main import main

sys.exit(main())

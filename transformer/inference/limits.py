"""How much one generation request may ask for, in a module without torch, so the command line
can state it in `--help` without importing torch."""

MAX_NEW_TOKENS = 1_000_000  # past n_ctx each new token is a full forward: more is days of work on a CPU

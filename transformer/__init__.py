"""A transformer, and a routed decoder, built from raw tensors.

Read it the way data flows: tokens -> Embed (+ positions) -> layers -> final norm -> Unembed.
"""

import os

if os.environ.get("TRANSFORMER_TYPECHECK", "") == "1":
    # Workers spawned by torchrun/mp.spawn do not inherit pytest's import hook; install it
    # here, before any checked module is imported (see transformer/typecheck.py).
    from jaxtyping import install_import_hook

    install_import_hook("transformer", "typeguard.typechecked")

__version__ = "0.1.0"

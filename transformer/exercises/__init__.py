"""Exercises: a stub per chapter of docs/modules/, for a learner to fill in, with the package as
the solution.

Each stub (`this folder's <chapter>.py`, chapter = a module of transformer/model/) keeps
the package's public names and signatures and raises `NotImplementedError` where the learner
writes code. `pytest --exercises tests/model/test_norm.py` (or `transformer exercise
<chapter>`) swaps the learner's copy, `exercises/<chapter>.py` at the repository root, in for the
package's names, so the chapter's own tests judge it; docs/exercises.md says how. The stubs here
stay pristine: they are what `transformer exercise <chapter> --reset` copies back.
"""

CHAPTERS = ("embed", "positions", "rotary", "alibi", "norm", "attention", "mlp", "layer", "decoder")

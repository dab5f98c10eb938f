"""Interpretability on a trained plain `Decoder`: read, replace and explain its activations.

- `hooks.py`: TransformerLens's hook names for our modules, hooks that read or replace an
  activation, and `run_with_cache`, which records them all.
- `attribution.py`: the residual stream as a sum of what each head, MLP and embedding wrote,
  and direct logit attribution (each part's share of a logit).
- `circuits.py`: the QK and OV circuits of a head and the composition scores between heads.
- `heads.py`: what one head does (its output, previous-token and induction scores) and
  ablations (replace a head's output by zero or its mean).
- `figures.py`: attention patterns and per-head scores as figures (matplotlib, optional).
docs/interpretability.md walks through all of them on a 2-layer attention-only model.
"""

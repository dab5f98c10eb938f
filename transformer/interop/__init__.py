"""Other projects' weights in our modules, and ours in theirs.

- `gpt2.py`, `llama.py`: a Hugging Face GPT-2 or Llama state dict and config <-> a `Decoder`
  with the same function (tests/interop/ prove equal logits and bit-exact round trips).
- `hf_files.py`: read and write the Hugging Face folder format (config.json +
  model.safetensors, never pickle) and fetch a model from the Hub.
- `lens.py`: a `Decoder` as a TransformerLens `HookedTransformer` (optional `interp` extra).

None of it imports `transformers`: the state dict and config.json are plain data, so loading a
checkpoint needs only safetensors; the tests use `transformers` to make the reference models.
"""

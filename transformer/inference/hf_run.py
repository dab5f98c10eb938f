"""A Hugging Face model as a `TrainedRun`, so generate and chat run it through our modules.

`transformer generate --hf gpt2` downloads GPT-2 (config, safetensors weights, tokenizer.json)
from the Hub once, copies the weights into a `Decoder` (transformer/interop/hf.py) and
generates with our sampling and KV cache. A local folder in the same format works offline.
The tokenizer must be a byte-level BPE with an `<|endoftext|>` token, as GPT-2's is (Llama's
tokenizers are not: their models load with `load_hf`, but these commands cannot encode for them).
"""

from pathlib import Path

import torch

from transformer.data.tokenizer import TextTokenizer
from transformer.devices import resolve_device
from transformer.inference.loading import TrainedRun
from transformer.interop.hf import download_hf, load_hf
from transformer.training.config import RunConfig


def load_hf_run(name: str, device: str | torch.device = "cpu") -> TrainedRun:
    """`name`: a local Hugging Face model folder, else a Hub id ("gpt2", "openai-community/gpt2")."""
    place = device if isinstance(device, torch.device) else resolve_device(device)
    folder = Path(name) if Path(name).is_dir() else download_hf(name)
    tokenizer = TextTokenizer.load(folder / "tokenizer.json")
    model = load_hf(folder).to(place).eval()
    config = RunConfig(model=model.cfg, routing=None)
    return TrainedRun(model=model, tokenizer=tokenizer, config=config, checkpoint=folder, step=0)

"""The Hugging Face format: config.json + model.safetensors, read into a `Decoder` and written back.

`from_hf` / `to_hf` convert in memory (the config as a dict, the weights as a state dict);
`load_hf` / `save_hf` read and write a folder that `transformers`' `from_pretrained` also
reads. Weights are read with safetensors only: a `pytorch_model.bin` is a pickle, which can run
code on load, so it is refused with the way out (convert it, or pick a safetensors revision).
`download_hf` fetches a Hub model's config, weights and tokenizer with `huggingface_hub`
(the `hf` extra); it needs the network, so the tests never call it.
"""

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from transformer.interop.errors import InteropError
from transformer.interop.gpt2 import gpt2_config_of, gpt2_model_config, gpt2_to_state, state_to_gpt2
from transformer.interop.llama import (
    llama_config_of,
    llama_model_config,
    llama_to_state,
    shared_kv_heads,
    state_to_llama,
)
from transformer.model.decoder import Decoder

MODEL_TYPES = ("gpt2", "llama")


def from_hf(
    config: Mapping[str, Any], state: Mapping[str, Tensor], kernels: str = "fast", n_ctx: int | None = None
) -> Decoder:
    """A `Decoder` computing what the Hugging Face model of `config` and `state` computes, in
    the weights' dtype, in eval mode. `n_ctx` (Llama only): a shorter context than the config's."""
    kind = config.get("model_type")
    try:
        if kind == "gpt2":
            cfg = gpt2_model_config(config, kernels)
            ours = gpt2_to_state(state, cfg)
        elif kind == "llama":
            cfg = llama_model_config(config, kernels, n_ctx)
            ours = llama_to_state(state, cfg)
        else:
            raise InteropError(f"model_type={kind!r} is not one of {list(MODEL_TYPES)}")
    except KeyError as absent:
        raise InteropError(f"the {kind} checkpoint lacks {absent}: is its config.json for these weights?") from None
    model = Decoder(cfg).to(next(iter(ours.values())).dtype)
    missing, unexpected = model.load_state_dict(ours, strict=False)
    if missing or unexpected:
        raise InteropError(f"the {kind} weights do not fit: missing {missing}, unexpected {unexpected}")
    return model.eval()


def to_hf(model: Decoder, model_type: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The config.json and state dict of the `model_type` ("gpt2" or "llama") model that
    computes what `model` computes."""
    cfg, state = model.cfg, {key: value.detach() for key, value in model.state_dict().items()}
    if model_type == "gpt2":
        return gpt2_config_of(cfg), state_to_gpt2(state, cfg)
    if model_type == "llama":
        n_kv = shared_kv_heads(state, cfg)
        return llama_config_of(cfg, n_kv), state_to_llama(state, cfg, n_kv)
    raise InteropError(f"model_type={model_type!r} is not one of {list(MODEL_TYPES)}")


def load_hf(folder: Path, kernels: str = "fast", n_ctx: int | None = None) -> Decoder:
    """A `Decoder` from a Hugging Face model folder (config.json and *.safetensors)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InteropError(f"{folder} has no config.json: give a Hugging Face model folder")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        pickled = [p.name for p in folder.glob("*.bin")]
        hint = f" ({', '.join(pickled)} is a pickle, which can run code on load)" if pickled else ""
        raise InteropError(f"{folder} has no .safetensors weights{hint}: convert them to safetensors first")
    state: dict[str, Tensor] = {}
    for shard in shards:
        state.update(load_file(str(shard)))
    return from_hf(json.loads(config_path.read_text()), state, kernels, n_ctx)


def save_hf(model: Decoder, folder: Path, model_type: str) -> None:
    """Writes config.json and model.safetensors, which `transformers` loads with `from_pretrained`."""
    config, state = to_hf(model, model_type)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


def download_hf(repo_id: str) -> Path:
    """The local folder of Hub model `repo_id` (config, safetensors weights, tokenizer.json),
    downloaded once into the Hugging Face cache."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise InteropError("downloading from the Hub needs huggingface_hub: pip install 'transformer[hf]'") from None
    try:
        path = snapshot_download(repo_id, allow_patterns=["config.json", "*.safetensors", "tokenizer.json"])
    except Exception as error:  # network, unknown repo, gated model: all the user's to fix
        raise InteropError(f"cannot download {repo_id!r} from the Hugging Face Hub: {error}") from None
    return Path(path)

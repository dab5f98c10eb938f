"""On a GPU: both kernel paths compute the CPU's function, a training step never makes the
host wait for the device, bf16 autocast trains like fp32, and the KV cache gives the full
forward's logits. Skipped without CUDA (the `cuda` marker; see tests/conftest.py)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from transformer.model.config import ModelConfig
from transformer.model.decoder import Decoder
from transformer.model.kv_cache import KVCache
from transformer.training.optim import fused_available

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
D_VOCAB, BATCH, POS = 50, 4, 32
REPO = Path(__file__).resolve().parents[2]


def model(kernels: str = "fast", device: torch.device = CUDA, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_vocab=D_VOCAB, d_model=64, n_heads=4, n_layers=2, n_ctx=POS, kernels=kernels, dropout=0.0)
    return Decoder(cfg).to(device)


def tokens(device: torch.device = CUDA, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, D_VOCAB, (BATCH, POS + 1), generator=torch.Generator().manual_seed(seed)).to(device)


def loss_of(decoder: Decoder, batch: torch.Tensor) -> torch.Tensor:
    logits = decoder(batch[:, :-1]).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())


def gradients(decoder: Decoder, batch: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    loss = loss_of(decoder, batch)
    loss.backward()
    return loss.detach(), [p.grad.detach().clone() for p in decoder.parameters() if p.grad is not None]


@pytest.mark.parametrize("kernels", ["readable", "fast"])
def test_each_path_on_cuda_computes_what_it_computes_on_cpu(kernels: str) -> None:
    on_cpu, on_gpu = model(kernels, torch.device("cpu")), model(kernels)
    cpu_loss, cpu_grads = gradients(on_cpu, tokens(torch.device("cpu")))
    gpu_loss, gpu_grads = gradients(on_gpu, tokens())
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, atol=1e-5, rtol=1e-5)
    assert len(gpu_grads) == len(cpu_grads) == len(list(on_cpu.parameters()))
    for gpu_grad, cpu_grad in zip(gpu_grads, cpu_grads, strict=True):
        torch.testing.assert_close(gpu_grad.cpu(), cpu_grad, atol=1e-5, rtol=1e-4)


def test_readable_and_fast_paths_agree_on_cuda() -> None:
    readable_loss, readable_grads = gradients(model("readable"), tokens())
    fast_loss, fast_grads = gradients(model("fast"), tokens())
    torch.testing.assert_close(fast_loss, readable_loss, atol=1e-5, rtol=1e-5)
    for fast_grad, readable_grad in zip(fast_grads, readable_grads, strict=True):
        torch.testing.assert_close(fast_grad, readable_grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernels", ["readable", "fast"])
def test_a_training_step_never_waits_for_the_device(kernels: str) -> None:
    """Forward, backward, clipping and the fused AdamW update with torch's sync debug mode set to
    "error": any call that makes the host wait for the GPU (`.item()`, `bool(tensor)`, a copy to
    the host, `nonzero`) raises. The step runs once before, so lazy initialisation is not counted."""
    decoder = model(kernels)
    parameters = list(decoder.parameters())
    assert fused_available(parameters)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, fused=True)
    batch = tokens()

    def step() -> torch.Tensor:
        loss = loss_of(decoder, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    first = step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        later = [step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert float(later[-1]) < float(first)  # it trained: the same batch, three updates later


def test_a_sync_is_caught_by_the_debug_mode() -> None:
    """The check above could pass vacuously if the debug mode did nothing: here it must raise."""
    x = torch.ones(3, device=CUDA)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            x.sum().item()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_bf16_autocast_step_is_finite_and_close_to_fp32() -> None:
    reference_loss, reference_grads = gradients(model(), tokens())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf16_loss, bf16_grads = gradients(model(), tokens())
    assert torch.isfinite(bf16_loss) and all(torch.isfinite(g).all() for g in bf16_grads)
    assert abs(float(bf16_loss) - float(reference_loss)) < 0.02 * float(reference_loss)
    flat_bf16 = torch.cat([g.float().flatten() for g in bf16_grads])
    flat_fp32 = torch.cat([g.flatten() for g in reference_grads])
    assert F.cosine_similarity(flat_bf16, flat_fp32, dim=0) > 0.99


@pytest.mark.parametrize("kernels", ["readable", "fast"])
def test_kv_cache_on_cuda_gives_the_full_forwards_logits(kernels: str) -> None:
    decoder = model(kernels).eval()
    sequence = tokens()[:, :POS]
    cache = KVCache(decoder.cfg.n_layers)
    with torch.no_grad():
        whole = decoder(sequence).logits
        pieces = [decoder(sequence[:, start:stop], cache=cache).logits for start, stop in [(0, 7), (7, 8), (8, POS)]]
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-5, rtol=1e-4)


BAD_ID_SCRIPT = """
import torch
from transformer.model.decoder import Decoder
from transformer.model.config import ModelConfig
decoder = Decoder(ModelConfig(d_vocab=50, d_model=64, n_heads=4, n_layers=1, n_ctx=8)).cuda()
decoder(torch.full((1, 4), 49, device="cuda"))
torch.cuda.synchronize()
print("in range: ok", flush=True)
decoder(torch.full((1, 4), 50, device="cuda"))
torch.cuda.synchronize()
print("out of range: not caught", flush=True)
"""


def test_an_out_of_range_id_on_cuda_is_refused_by_the_device() -> None:
    """Off the CPU the range check is an asynchronous device-side assert (no host wait): it
    fires once the device runs it. A fired device assert ends the process's CUDA context, so
    this runs in a subprocess of its own."""
    finished = subprocess.run(
        [sys.executable, "-c", BAD_ID_SCRIPT], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    assert "in range: ok" in finished.stdout
    assert "not caught" not in finished.stdout and finished.returncode != 0
    assert "token ids must lie" in finished.stderr or "device-side assert" in finished.stderr

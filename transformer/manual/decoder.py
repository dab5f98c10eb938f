"""The whole plain decoder by hand: every layer's forward, then every backward in reverse order.

The forward keeps one saved record per module; the backward starts from dL/dL = 1 at the loss
and walks the records back: cross-entropy and unembedding, the final norm, the layers from the
last to the first, the embedding. What comes out is the gradient of every parameter of the
`Decoder`, under its `named_parameters` name, so `set_grads` can hand it to any torch optimizer
and a test can compare it with autograd's `parameter.grad`.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from transformer.manual.block import Grads, ManualBackpropError, prefixed
from transformer.manual.embed import LossSaved, ManualEmbed, ManualUnembedLoss
from transformer.manual.layer import LayerSaved, ManualLayer
from transformer.manual.norm import NormSaved, manual_norm
from transformer.model.decoder import Decoder, DecoderEnds
from transformer.model.layer import TransformerLayer


@dataclass(frozen=True)
class DecoderSaved:
    tokens: Tensor
    key_padding_mask: Tensor | None
    layers: list[LayerSaved]
    ln_final: NormSaved
    loss: LossSaved


@dataclass(frozen=True)
class ManualDecoder:
    """`key_padding_mask`: True where a key may be attended to, as in `Decoder.forward`;
    `targets` equal to -100 are padding and not scored."""

    model: DecoderEnds  # any decoder, so that a routed one is refused here with a UserError

    def __post_init__(self) -> None:
        if type(self.model) is not Decoder:
            raise ManualBackpropError(
                f"the hand-written backward covers the plain Decoder, not {type(self.model).__name__}"
            )

    @property
    def module(self) -> Decoder:
        assert isinstance(self.model, Decoder)
        return self.model

    @torch.no_grad()  # no graph is built: every gradient below is written out by hand
    def forward(
        self, tokens: Tensor, targets: Tensor, key_padding_mask: Tensor | None = None
    ) -> tuple[Tensor, DecoderSaved]:
        m = self.module
        resid = ManualEmbed(m).forward(tokens)
        layers = []
        for layer in m.layers:
            assert isinstance(layer, TransformerLayer)
            resid, saved = ManualLayer(layer, key_padding_mask).forward(resid)
            layers.append(saved)
        normed, ln_final = manual_norm(m.ln_final).forward(resid)
        loss, loss_saved = ManualUnembedLoss(m).forward(normed, targets)
        return loss, DecoderSaved(tokens, key_padding_mask, layers, ln_final, loss_saved)

    @torch.no_grad()
    def backward(self, saved: DecoderSaved) -> Grads:
        m = self.module
        d_normed, grads = ManualUnembedLoss(m).backward(saved.loss)
        d_resid, ln_grads = manual_norm(m.ln_final).backward(saved.ln_final, d_normed)
        grads |= prefixed("ln_final", ln_grads)
        for index in reversed(range(len(m.layers))):
            module = m.layers[index]
            assert isinstance(module, TransformerLayer)
            layer = ManualLayer(module, saved.key_padding_mask)
            d_resid, layer_grads = layer.backward(saved.layers[index], d_resid)
            grads |= prefixed(f"layers.{index}", layer_grads)
        for name, grad in ManualEmbed(m).backward(saved.tokens, d_resid).items():
            grads[name] = grads[name] + grad if name in grads else grad  # tied W_E: both ends add
        return grads

    def loss_and_grads(
        self, tokens: Tensor, targets: Tensor, key_padding_mask: Tensor | None = None
    ) -> tuple[Tensor, Grads]:
        loss, saved = self.forward(tokens, targets, key_padding_mask)
        return loss, self.backward(saved)

    def set_grads(self, grads: Grads) -> None:
        """Write `grads` into each parameter's `.grad`, where a torch optimizer reads them."""
        parameters = dict(self.module.named_parameters())
        if set(grads) != set(parameters):
            raise ManualBackpropError(f"gradients for {sorted(grads)} do not match parameters {sorted(parameters)}")
        for name, parameter in parameters.items():
            parameter.grad = grads[name].detach()

"""Hook points: named places inside a block where analysis may read or replace an activation.

A `HookPoint` is an identity module. Being a module gives it a dotted name in
`named_modules()` (`layers.0.attn.hook_pattern`) and PyTorch's forward hooks, so
transformer/analysis/interp/ can record what passes through it, or return something else
in its place (an ablation), without the model knowing. Attention and the MLP call theirs on
the readable path only: the fast path never materialises an attention pattern, and leaving
it untouched means training pays nothing for analysis. Recording switches a model to the
readable path for its duration (tests/model/test_kernels.py proves the paths agree).
"""

from torch import Tensor, nn


class HookPoint(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x

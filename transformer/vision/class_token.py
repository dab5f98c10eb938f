"""The class token: one learned extra position whose final state summarises the image.

A classifier needs one vector per image, but the stack returns one per patch. ViT (after BERT's
[CLS]) prepends a learned vector to the patch sequence; with bidirectional attention it reads
from every patch in every layer, and only its final state goes to the classification head.
(Mean pooling over patches is the other common readout; the class token lets the model learn
which patches matter.) tests/vision/test_class_token.py shows it learns to read what it is asked.
"""

import torch
from jaxtyping import Float
from torch import Tensor, nn


class ClassToken(nn.Module):
    def __init__(self, d_model: int, init_std: float = 0.02) -> None:
        super().__init__()
        self.w_cls = nn.Parameter(torch.randn(d_model) * init_std)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos+1 d_model"]:
        """The class token at position 0, then the sequence."""
        cls = self.w_cls.expand(x.shape[0], 1, -1).to(x.dtype)
        return torch.cat([cls, x], dim=1)

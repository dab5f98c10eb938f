"""One backbone, three objectives: the decoder's layers, reused for images and for diffusion.

A language model reads tokens left to right; an image has no left and right, so the same
`transformer.model` layers run here with `ModelConfig(causal=False)`: every patch sees every
other. What images add around that stack is small, one module a file:

- patches.py: an image cut into patches, each flattened and projected (a strided convolution);
- class_token.py: a learned extra position whose final state is the image's summary;
- conditioning.py: the diffusion timestep and the class label as vectors;
- adaln.py: a layer whose norms are shifted, scaled and gated by that vector (DiT's adaLN-Zero);
- vit.py: the classifier (ViT); dit.py: the noise predictor (DiT); diffusion.py: the noise
  schedule, the loss and the sampler; digits.py: scikit-learn's bundled 8x8 digits;
  fit.py: the training loops the experiments and the slow tests share.
"""

"""Backpropagation written out by hand: the plain decoder's gradients as tensor algebra, no autograd.

Each file here pairs one module of `transformer.model` with a forward that returns what its
backward needs (a small record of saved tensors) and a backward that turns the gradient of the
output into the gradients of the input and of every weight. The weights are read from the
package's own modules, so a test can run the same module through autograd and compare
(tests/manual/). docs/modules/backprop.md derives each backward next to its code.

Nothing in the package imports this subpackage: it exists to be read, tested and benchmarked.
"""

"""Suite-wide settings. Tests' models are tiny: one thread each runs them fastest, and keeps the
suite's timing steady on a loaded 2-core machine (several threads per process oversubscribe it)."""

import torch

torch.set_num_threads(1)

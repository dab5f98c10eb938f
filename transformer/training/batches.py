"""Training batches on their way to the device, one optimizer step ahead of the model.

Windows are drawn on the host (`TokenData.sample_windows`, which also checks every id against
the vocabulary there, so the model never has to read ids back from a GPU). On CUDA each step's
micro-batches go into pinned memory and are copied with `non_blocking=True`; the trainer asks
for the *next* step's batches (`prefetch`) as soon as the current step's backward is queued, so
the host draws and copies them while the GPU is still computing, and the GPU never waits for
data. On the CPU there is nothing to overlap: the same calls draw the windows and hand them on.

Drawing ahead would shift the data stream a checkpoint records by one step, and a resumed run
would skip a batch. `generator_state` is therefore the stream's state *before* any batch drawn
ahead and not yet taken: a resume draws exactly the batches the uninterrupted run would.
"""

from collections.abc import Callable

import torch
from jaxtyping import Int
from torch import Tensor

Draw = Callable[[torch.Generator], Int[Tensor, "batch window"]]


class StepBatches:
    def __init__(self, draw: Draw, generator: torch.Generator, device: torch.device, micro_batches: int) -> None:
        """`draw(generator)`: one micro-batch of windows on the host; `micro_batches` per step."""
        self.draw = draw
        self.generator = generator
        self.device = device
        self.micro_batches = micro_batches
        self.pin = device.type == "cuda"
        self._ahead: list[Tensor] | None = None
        self._state_before_ahead: Tensor | None = None

    def take(self) -> list[Tensor]:
        """This step's micro-batches on the device (drawn now unless `prefetch` drew them)."""
        if self._ahead is None:
            return self._fetch()
        batches, self._ahead, self._state_before_ahead = self._ahead, None, None
        return batches

    def prefetch(self) -> None:
        """Draw the next step's micro-batches and start copying them to the device."""
        if self._ahead is None:
            self._state_before_ahead = self.generator.get_state()
            self._ahead = self._fetch()

    def generator_state(self) -> Tensor:
        """The data stream as a checkpoint must record it: before any batch drawn ahead."""
        return self._state_before_ahead if self._state_before_ahead is not None else self.generator.get_state()

    def _fetch(self) -> list[Tensor]:
        host = torch.stack([self.draw(self.generator) for _ in range(self.micro_batches)])
        if self.pin:
            host = host.pin_memory()
        on_device = host.to(self.device, non_blocking=self.pin)
        return list(on_device.unbind(0))

"""Drawing a step's batches ahead changes neither which windows a run sees nor what its
checkpoint records: a stream restarted from `generator_state` draws what the run drew next."""

import torch

from transformer.training.batches import StepBatches


def draw(generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 1000, (3, 5), generator=generator)


def test_batches_drawn_ahead_are_the_ones_drawn_in_step() -> None:
    plain, ahead = (StepBatches(draw, torch.Generator().manual_seed(0), torch.device("cpu"), 2) for _ in range(2))
    for _ in range(4):
        expected = plain.take()
        got = ahead.take()
        ahead.prefetch()
        assert len(got) == 2 and all(g.shape == (3, 5) for g in got)
        assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    assert not torch.equal(expected[0], expected[1])  # the two micro-batches are different windows


def test_the_recorded_state_is_before_the_batches_drawn_ahead() -> None:
    batches = StepBatches(draw, torch.Generator().manual_seed(1), torch.device("cpu"), 1)
    batches.take()
    batches.prefetch()  # step 2's batch is drawn now, before a checkpoint at the end of step 1
    saved = batches.generator_state()
    step_2 = batches.take()
    resumed = StepBatches(draw, torch.Generator().set_state(saved), torch.device("cpu"), 1)
    assert torch.equal(resumed.take()[0], step_2[0])
    assert torch.equal(batches.generator_state(), batches.generator.get_state())  # nothing ahead now

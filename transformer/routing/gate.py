"""How the task loss reaches the router through a discrete choice, without changing the forward.

Picking a layer with argmax (or a sample) has no gradient, so a router trained only through
its choice never learns from the task: it learns only from the balance loss. The gate fixes
this. With x the residual entering the step, y the chosen layer's output and s a
differentiable score of the choice,

    out = y + (s - s.detach()) * (y - x).detach()

Forward: s - s.detach() is exactly 0.0, so out == y bitwise. Backward: d out / d y = I, so
the layers get exactly the plain gradient, and the router gets dL/ds = <dL/dout, y - x>: how
much the loss would drop if this step's update (y - x) were scaled up.

Scores (`RoutingConfig.gradient`):
- "p": s = p_chosen (Switch/MoD style; favours layers that are already likely);
- "log_p": s = log p_chosen, the score-function form; its expectation over the sampled
  choice is the exact gradient of the expected first-order loss;
- "log_p_baseline": the score-function form with a leave-one-out baseline: each sample's
  reward minus the mean reward of the *other* samples in the batch (less variance, same
  expectation). With a batch of one there is no other sample and it is plain "log_p";
- "none": no gradient from the task (the published failure, kept as a negative control).
"""

from jaxtyping import Float, Int
from torch import Tensor


def choice_score(
    probabilities: Float[Tensor, "batch n_pool"], choice: Int[Tensor, " batch"], mode: str
) -> Float[Tensor, " batch"] | None:
    chosen = probabilities.gather(1, choice[:, None])[:, 0]
    if mode == "p":
        return chosen
    if mode == "none":
        return None
    log_p = chosen.clamp_min(1e-30).log()
    if mode == "log_p":
        return log_p
    if mode == "log_p_baseline":
        batch = log_p.shape[0]
        if batch == 1:
            return log_p
        # With s_b = B / (B - 1) * (log p_b - mean log p):
        #   sum_b R_b ds_b = sum_b (R_b - mean_{b' != b} R_b') d log p_b,
        # the leave-one-out baseline, whose expectation is the unbaselined one.
        return (log_p - log_p.mean()) * (batch / (batch - 1))
    raise ValueError(f"unknown routing gradient mode {mode!r}")


def gate(
    x: Float[Tensor, "batch pos d_model"],
    y: Float[Tensor, "batch pos d_model"],
    score: Float[Tensor, " batch"] | None,
) -> Float[Tensor, "batch pos d_model"]:
    if score is None:
        return y
    zero_with_gradient = (score - score.detach()).to(y.dtype)[:, None, None]
    return y + zero_with_gradient * (y - x).detach()

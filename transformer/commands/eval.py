"""`transformer eval`: a trained run's loss and perplexity on held-out text.

Windows tile the text: window i is tokens [i * n_ctx, (i + 1) * n_ctx], so every token after
the first is a target once (not the random windows training evaluates on, so the numbers differ
a little from metrics.jsonl). Batches are all `--batch-size` windows: the windows that would
make a last, smaller batch are left out (and counted), so the mean of batch losses is the mean
over scored tokens; the batch size is lowered (to no less than half of `--batch-size`) where
that leaves out fewer windows.

Which targets are scored matters. A routed model scores only targets at positions >= P
(route_prefix_len): earlier ones were predicted by layers chosen after reading them (see
docs/routing.md §2). A plain model scores every target, including the first ones, which have
little context and are the hardest. `--first-target N` scores targets at positions >= N for
either kind, so a plain and a routed run can be compared on the same targets.

Heavy imports happen inside the handler, so `transformer --help` stays fast.
"""

import argparse
import json
import math
from typing import Any

from transformer.commands.errors import CommandError
from transformer.commands.options import add_run_options, chosen_device, seed_int


def add_eval_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = commands.add_parser(
        "eval",
        help="loss and perplexity of a trained run (routed: argmax and sampled routes)",
        description="Evaluate a trained run on its validation split or on any text.",
    )
    add_run_options(parser)
    parser.add_argument(
        "--data",
        default=None,
        metavar="SOURCE",
        help="evaluate on all windows of this source (builtin, a file, a folder, hf:...) "
        "instead of the run's own validation split",
    )
    parser.add_argument(
        "--batches",
        type=int,
        default=None,
        metavar="N",
        help="evaluate N batches of windows drawn at random (--seed); default: every window",
    )
    parser.add_argument("--batch-size", type=int, default=16, metavar="B")
    parser.add_argument(
        "--route-samples",
        type=int,
        default=None,
        metavar="M",
        help="routed runs: sampled-route passes per batch (default: the run's eval_route_samples)",
    )
    parser.add_argument(
        "--first-target",
        type=int,
        default=None,
        metavar="N",
        help="score targets at positions >= N (default: the model's rule: P for routed, all for plain)",
    )
    parser.add_argument("--seed", type=seed_int, default=0, help="seeds the window draw and the sampled routes")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    parser.set_defaults(handler=run_eval, prog=parser.prog)


def run_eval(args: argparse.Namespace) -> int:
    record = evaluate_command(args)
    print(json.dumps(record) if args.json else summary(record))
    return 0


def evaluate_command(args: argparse.Namespace) -> dict[str, Any]:
    """Everything `eval` reports, as one JSON-ready record."""
    import torch

    from transformer.analysis.routes import pick_windows, scored_loss, tiled_windows
    from transformer.inference.loading import load_trained
    from transformer.training.evaluation import evaluate
    from transformer.training.objective import first_scored_target

    if (args.batches is not None and args.batches < 1) or args.batch_size < 1:
        raise CommandError("--batches and --batch-size must be positive")
    if args.route_samples is not None and args.route_samples < 0:
        raise CommandError(f"--route-samples {args.route_samples} must be >= 0")
    run = load_trained(args.run, args.checkpoint, chosen_device(args))
    model, n_ctx = run.model, run.model.cfg.n_ctx
    routed = model.kind == "routed"
    own_first = first_scored_target(model)
    first = own_first if args.first_target is None else args.first_target
    _check_first_target(first, own_first, n_ctx, routed)

    stream, described = _stream(args.data, run)
    windows = tiled_windows(stream, n_ctx + 1, n_ctx)
    if len(windows) == 0:
        raise CommandError(f"{described} has {len(stream)} tokens, fewer than n_ctx + 1 = {n_ctx + 1}")
    generator = torch.Generator().manual_seed(args.seed)
    wanted = None if args.batches is None else args.batches * args.batch_size
    windows = pick_windows(windows, wanted, generator)
    batch_size = whole_batch_size(len(windows), args.batch_size)
    n_batches = len(windows) // batch_size
    device = next(model.parameters()).device
    batches = [windows[i * batch_size : (i + 1) * batch_size].to(device) for i in range(n_batches)]

    samples = run.config.train.eval_route_samples if args.route_samples is None else args.route_samples
    record: dict[str, Any] = {
        "run": str(args.run),
        "checkpoint": str(run.checkpoint),
        "step": run.step,
        "decoder": "routed" if routed else "plain",
        "data": described,
        "tokens": len(stream),
        "windows": n_batches * batch_size,
        "windows_left_out": len(windows) - n_batches * batch_size,
        "window_tokens": n_ctx + 1,
        "batch_size": batch_size,
        "batches": n_batches,
        "first_target": first,
        "model_first_target": own_first,
        "scored_targets_per_window": n_ctx - max(first, 1) + 1,
    }
    record["scored_targets"] = record["windows"] * record["scored_targets_per_window"]
    if routed:
        record.update(
            granularity=model.route_granularity,
            route_prefix_len=own_first,
            route_samples=samples,
            route_temperature=model.route_temperature,
            seed=args.seed,
        )
    rescore = first != own_first  # usage and entropies do not depend on the targets; the losses do
    evaluation = evaluate(model, batches, 0 if rescore else samples, args.seed)
    loss, sampled = evaluation.val_loss, evaluation.sampled_route_loss
    if rescore:
        loss = scored_loss(model, batches, first)
        sampled = scored_loss(model, batches, first, samples, args.seed) if routed and samples else None
    record.update(loss=loss, perplexity=_perplexity(loss))
    if routed:
        record.update(
            sampled_route_loss=sampled,
            sampled_route_perplexity=None if sampled is None else _perplexity(sampled),
            usage=evaluation.usage,
            usage_entropy=evaluation.usage_entropy,
            decision_entropy=evaluation.decision_entropy,
            **evaluation.work,
        )
    return record


def whole_batch_size(n_windows: int, largest: int) -> int:
    """The batch size, between largest // 2 and largest, that leaves out the fewest windows
    (the larger on a tie): batches must be equal for their mean to be the mean over tokens."""
    if n_windows <= largest:
        return max(n_windows, 1)
    return min(range(max(largest // 2, 1), largest + 1), key=lambda size: (n_windows % size, -size))


def _check_first_target(first: int, own_first: int, n_ctx: int, routed: bool) -> None:
    if not 0 <= first <= n_ctx:
        raise CommandError(f"--first-target {first} must be between 0 and n_ctx = {n_ctx}")
    if routed and first < own_first:
        raise CommandError(
            f"--first-target {first} is before the routing prefix (P = {own_first}): the route was chosen "
            f"after reading those targets, so their loss is not honest (docs/routing.md §2); use N >= {own_first}"
        )


def _stream(source: str | None, run: Any) -> tuple[Any, str]:
    """The tokens to evaluate on, and words for where they came from."""
    import torch

    from transformer.analysis.routes import token_stream
    from transformer.data.corpus import load_documents
    from transformer.data.tokens import prepare_corpus

    if source is not None:
        return token_stream(load_documents(source), run.tokenizer), source
    settings = run.config.train
    data = prepare_corpus(settings.data, run.tokenizer, settings.val_fraction)
    stream = torch.from_numpy(data.val.astype("int64"))
    return stream, f"the validation split of {settings.data} (val_fraction {settings.val_fraction})"


def _perplexity(loss: float) -> float:
    return math.exp(min(loss, 700.0))


def summary(record: dict[str, Any]) -> str:
    """The record in words."""
    lines = [
        f"{record['decoder']} decoder from {record['checkpoint']} (step {record['step']})",
        f"data: {record['data']}: {record['tokens']:,} tokens -> {record['windows']:,} windows of "
        f"{record['window_tokens']} tokens in {record['batches']:,} batches of {record['batch_size']}"
        + (f" ({record['windows_left_out']} left out to keep batches whole)" if record["windows_left_out"] else ""),
        _targets_line(record),
    ]
    routed = record["decoder"] == "routed"
    label = "loss (argmax routes)" if routed else "loss"
    lines.append(f"{label}: {record['loss']:.4f} nats/token, perplexity {record['perplexity']:.2f}")
    if routed:
        if record["sampled_route_loss"] is None:
            lines.append("loss (sampled routes): not measured (--route-samples 0)")
        else:
            lines.append(
                f"loss (sampled routes): {record['sampled_route_loss']:.4f} nats/token, perplexity "
                f"{record['sampled_route_perplexity']:.2f} ({record['route_samples']} samples per window at "
                f"temperature {record['route_temperature']:.3f}, seed {record['seed']})"
            )
        pool = len(record["usage"][0])
        token = record.get("granularity") == "token"
        what = "entry usage (layers, then skip)" if "skip_fraction" in record else "layer usage"
        for step, fractions in enumerate(record["usage"]):
            per = ", per token" if token else ""
            lines.append(f"{what} at step {step} (argmax routes{per}): " + " ".join(f"{f:.2f}" for f in fractions))
        if token:
            skipped = f", skip {record['skip_fraction']:.3f} of choices" if "skip_fraction" in record else ""
            lines.append(
                f"layers per token {record['layers_per_token']:.3f} of {len(record['usage'])} steps; "
                f"dropped (over capacity) {record['dropped_fraction']:.3f} of layer requests{skipped}"
            )
        lines.append(
            f"usage entropy {record['usage_entropy']:.3f} nats, decision entropy {record['decision_entropy']:.3f} "
            f"nats (ln {pool} = {math.log(pool):.3f} is even use / a coin flip)"
        )
    return "\n".join(lines)


def _targets_line(record: dict[str, Any]) -> str:
    first, own = record["first_target"], record["model_first_target"]
    shown = max(first, 1)
    scope = (
        f"targets at positions {shown}..{record['window_tokens'] - 1} of each window "
        f"({record['scored_targets_per_window']} per window, {record['scored_targets']:,} in all)"
    )
    if first == own and record.get("granularity") == "token":
        why = "the token-routed model's rule: every target (each token's route reads only tokens up to it)"
    elif first == own and record["decoder"] == "routed":
        why = (
            f"the routed model's rule: from its routing prefix P = {own} on; "
            f"compare a plain run with --first-target {own}"
        )
    elif first == own:
        why = "the plain model's rule: every target; compare with a routed run using --first-target P"
    else:
        why = f"--first-target {first}; the model's own rule starts at position {max(own, 1)}"
    return f"scored: {scope}; {why}"

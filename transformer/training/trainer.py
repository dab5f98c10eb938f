"""`transformer train`: the training loop, on one process or many (torchrun + DDP or FSDP).

Each optimizer step: set the learning rate and routing temperature for this step, run
`grad_accum` micro-batches (gradients synchronised across ranks only on the last), skip the
step if the loss is not finite, clip, update. Rank 0 logs, shows progress, evaluates and
writes checkpoints; every rank keeps its own data and routing random streams, and all of
them go into the checkpoint, so a resumed run continues bit for bit.

The run directory is never clobbered: rank 0 holds its lock for the whole run, cleans what
killed saves left, and a resume must continue this directory's own latest checkpoint (or
branch a checkpoint into an empty directory). SIGINT and SIGTERM save and exit; a peer that
dies or stalls ends every rank after `train.dist_timeout_s`.
"""

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from transformer.data.sources import sample_documents
from transformer.data.tokenizer import TextTokenizer, train_tokenizer
from transformer.data.tokens import TokenData, prepare_corpus, prepared_tokenizer
from transformer.errors import UserError
from transformer.inference.generation import generate
from transformer.model.decoder import DecoderEnds, DecoderOutput
from transformer.training import checkpoint as ckpt
from transformer.training import distributed, parallel, rng
from transformer.training.batches import StepBatches
from transformer.training.config import RunConfig, build_model
from transformer.training.distributed import (
    DATA_STREAM,
    DROPOUT_STREAM,
    EVAL_STREAM,
    ROUTING_STREAM,
    VAL_WINDOWS_STREAM,
    stream_seed,
)
from transformer.training.evaluation import Evaluation, evaluate
from transformer.training.objective import compute_objective
from transformer.training.optim import learning_rate, make_optimizer
from transformer.training.run_lock import RunLock
from transformer.training.run_log import RunLog, flops_per_token, peak_flops
from transformer.training.stop_signals import StopSignals


class TrainingError(UserError):
    """Training cannot go on; the message says why and what to do."""


@dataclass
class TrainResult:
    steps: int
    final_val_loss: float | None
    skipped_steps: int
    interrupted: bool
    run_dir: Path


# Settings whose saved value a resume keeps whatever the config says: an override of them
# could only be ignored, and then recorded in the next checkpoint as if it had applied.
FIXED_ON_RESUME = ("tokenizer", "vocab_size", "seed")


def train(config: RunConfig, resume: str | None = None, stop_at: int | None = None) -> TrainResult:
    if stop_at is not None and stop_at < 1:
        raise TrainingError(f"--stop-at {stop_at}: give a step of at least 1")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    timeout_s = config.train.dist_timeout_s
    process = distributed.start(config.train.device, timeout_s)
    lock = RunLock(Path(config.train.out_dir))
    signals = StopSignals()
    try:
        with signals.installed():
            _take_lock(lock, process)
            return _Run(config, process, resume, signals).run(stop_at)
    except KeyboardInterrupt:  # the loop handles its own; this one came while starting or finishing
        raise TrainingError(
            f"interrupted by {signals.received or 'Ctrl-C'} outside the training steps (while starting or "
            f"finishing): checkpoints, if any, are in {ckpt.checkpoints_dir(Path(config.train.out_dir))}"
        ) from None
    except (RuntimeError, OSError) as error:
        lost = distributed.peer_lost(error, process, timeout_s)
        if lost is None:
            raise
        raise lost from error
    finally:
        lock.release()
        distributed.stop()


def _take_lock(lock: RunLock, process: distributed.Process) -> None:
    """Rank 0 locks the run directory; every rank learns whether it could, and stops together."""
    refusal = ""
    if process.is_main:
        try:
            lock.acquire()
        except UserError as error:
            refusal = str(error)
    if process.distributed:
        shared = [refusal]
        dist.broadcast_object_list(shared, src=0)
        refusal = shared[0]
    if refusal:
        raise TrainingError(refusal)


class _Run:
    def __init__(
        self, config: RunConfig, process: distributed.Process, resume: str | None, signals: StopSignals
    ) -> None:
        self.process = process
        self.signals = signals
        self.settings = settings = config.train
        self.run_dir = Path(settings.out_dir)
        self._clean_leftovers()
        state = self._resume_state(resume)
        if state is None or self.branched:
            self._check_fresh_run_dir()
        self.tokenizer = self._tokenizer(state)
        self.config = config.with_vocab(self.tokenizer.vocab_size)  # what checkpoints record
        if state is not None:
            saved = RunConfig.from_dict(state["config"]).with_vocab(self.tokenizer.vocab_size)
            _check_same_model(saved, self.config)
            _check_fixed_settings(saved, self.config)
        self.data = self._data()
        rng.seed_everything(settings.seed)  # identical initial weights on every rank
        self.model = build_model(self.config).to(process.device)
        if state is not None:
            ckpt.read_weights(self.checkpoint, self.model)  # before FSDP shards the weights
        # FSDP replaces the parameters with shards: the optimizer is built on those
        self.wrapped: nn.Module = parallel.wrap_model(self.model, settings.parallel, process)
        self.optimizer = make_optimizer(self.model, settings)
        self.data_generator = torch.Generator().manual_seed(stream_seed(settings.seed, process.rank, DATA_STREAM))
        self.batches = StepBatches(self._draw_windows, self.data_generator, process.device, settings.grad_accum)
        self.model.seed_route_rng(lambda seed: stream_seed(seed, process.rank, ROUTING_STREAM))
        self.step, self.best_val, self.skipped, self.saved_step = 0, math.inf, 0, -1
        rng.seed_everything(stream_seed(settings.seed, process.rank, DROPOUT_STREAM))  # dropout differs per rank
        if state is not None:
            self._load(state)
        self._check_fsdp_evaluation()
        self.forward_model: nn.Module = torch.compile(self.wrapped) if settings.compile else self.wrapped  # type: ignore[assignment]
        self.log = RunLog(self.run_dir / "metrics.jsonl", enabled=process.is_main, tensorboard=settings.tensorboard)
        cfg = self.model.cfg
        self.tokens_per_step = settings.batch_size * cfg.n_ctx * settings.grad_accum * process.world_size
        self.flops_per_step = self.tokens_per_step * flops_per_token(
            self.model.active_parameters(), cfg.n_layers, cfg.d_model, cfg.n_ctx
        )
        self.peak = peak_flops(process.device)

    # --- setup -------------------------------------------------------------------------

    def _clean_leftovers(self) -> None:
        if self.process.is_main:  # the lock is rank 0's: no save of this run is under way
            removed = ckpt.clean_leftovers(self.run_dir)
            if removed:
                print(
                    f"note: removed what interrupted saves left in {ckpt.checkpoints_dir(self.run_dir)}: "
                    f"{', '.join(removed)}",
                    file=sys.stderr,
                )
        self._barrier()

    def _resume_state(self, resume: str | None) -> dict[str, Any] | None:
        self.branched = False
        if resume is None:
            return None
        self.checkpoint = ckpt.resolve(self.run_dir, resume)
        state = ckpt.read_state(self.checkpoint, ckpt.RESUME_FIELDS)
        self.branched = self.checkpoint.resolve().parent != ckpt.checkpoints_dir(self.run_dir).resolve()
        found = ckpt.step_checkpoints(self.run_dir)
        latest = ckpt.step_of(found[-1]) if found else None
        if not self.branched and latest is not None and state["step"] < latest:
            raise TrainingError(
                f"checkpoint {self.checkpoint} is at step {state['step']}, before this run's latest checkpoint "
                f"{found[-1].name}: continuing it here would overwrite newer checkpoints and best; branch it into a "
                f"new directory with --resume {self.checkpoint} --set train.out_dir=NEW_DIR"
            )
        return state

    def _check_fresh_run_dir(self) -> None:
        """A new run (or a checkpoint branched in from elsewhere) never overwrites a run's
        checkpoints, nor mixes its log with them."""
        found = ckpt.step_checkpoints(self.run_dir)
        if found:
            what = f"checkpoint {self.checkpoint} is not one of its own, and " if self.branched else ""
            raise TrainingError(
                f"{what}{self.run_dir} already holds a run (checkpoints up to {found[-1].name}): continue it with "
                "--resume latest, or start a new one elsewhere with --set train.out_dir=PATH"
            )
        old_log = self.run_dir / "metrics.jsonl"
        self._barrier()  # every rank has looked before rank 0 moves anything
        if self.process.is_main and old_log.exists():  # a run that died before its first checkpoint
            kept = old_log.with_name(f"metrics.before-{int(time.time())}.jsonl")
            old_log.rename(kept)
            print(f"note: {old_log} of an unfinished earlier run moved to {kept.name}", file=sys.stderr)

    def _tokenizer(self, state: dict[str, Any] | None) -> TextTokenizer:
        if state is not None:
            return TextTokenizer.from_json(state["tokenizer"])
        choice = self.settings.tokenizer
        prepared = prepared_tokenizer(self.settings.data)
        if prepared is not None and choice in ("char", "bpe"):
            # Ids made with one tokenizer mean nothing to another: a prepared folder brings its own.
            if choice != prepared.kind:
                raise TrainingError(
                    f"train.data={self.settings.data} was prepared with a {prepared.kind} tokenizer, not {choice}: "
                    f"set train.tokenizer={Path(self.settings.data) / 'tokenizer.json'}"
                )
            return prepared
        if choice not in ("char", "bpe"):
            return TextTokenizer.load(Path(choice))
        path = self.run_dir / "tokenizer.json"
        if self.process.is_main:
            documents = sample_documents(self.settings.data)  # a bounded sample of a large corpus
            train_tokenizer(choice, documents, self.settings.vocab_size).save(path)
        self._barrier()
        return TextTokenizer.load(path)

    def _data(self) -> TokenData:
        if self.process.is_main:  # one process tokenises; the others then find the cache
            data = prepare_corpus(self.settings.data, self.tokenizer, self.settings.val_fraction)
        self._barrier()
        if not self.process.is_main:
            data = prepare_corpus(self.settings.data, self.tokenizer, self.settings.val_fraction)
        return data

    def _load(self, state: dict[str, Any]) -> None:
        parallel.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.step, self.best_val, self.skipped = state["step"], state["best_val"], state["skipped"]
        self.saved_step = self.step
        rank, saved_world = self.process.rank, len(state["data_rng"])
        if saved_world != self.process.world_size and self.process.is_main:
            print(
                f"warning: checkpoint was written by {saved_world} processes, now {self.process.world_size}: "
                "data and routing streams restart, so the resume is not exact",
                file=sys.stderr,
            )
        if rank < saved_world:
            self.data_generator.set_state(state["data_rng"][rank])
            self.model.set_route_rng_state(state["router_rng"][rank])
            rng.restore(state["rng"][rank])

    def _check_fsdp_evaluation(self) -> None:
        """Under FSDP a forward pass gathers shards from every rank, so every rank must run as
        many as the others: the validation batches must split evenly."""
        world = self.process.world_size
        if self.settings.parallel == "fsdp" and world > 1 and self.settings.eval_batches % world:
            raise TrainingError(
                f"train.parallel=fsdp needs train.eval_batches={self.settings.eval_batches} to be a multiple of "
                f"the {world} processes: set it to {world * max(1, self.settings.eval_batches // world)}"
            )

    def _draw_windows(self, generator: torch.Generator) -> Tensor:
        return self.data.sample_windows("train", self.settings.batch_size, self.model.cfg.n_ctx, generator)

    def _barrier(self) -> None:
        if self.process.distributed:
            dist.barrier()

    # --- the loop ----------------------------------------------------------------------

    def run(self, stop_at: int | None) -> TrainResult:
        settings, main = self.settings, self.process.is_main
        last = min(settings.max_steps, stop_at) if stop_at is not None else settings.max_steps
        if settings.max_steps <= self.step:
            raise TrainingError(
                f"checkpoint {self.checkpoint} is at step {self.step}, and train.max_steps={settings.max_steps}: "
                "nothing left to train (raise train.max_steps to go on)"
            )
        if last <= self.step:
            raise TrainingError(f"--stop-at {stop_at} is not after the checkpoint's step {self.step}: nothing to train")
        if main:
            self._announce()
        progress = tqdm(
            total=settings.max_steps,
            initial=self.step,
            desc="train",
            disable=None if main else True,
            dynamic_ncols=True,
        )
        evaluation: Evaluation | None = None
        interrupted, bad_in_a_row = False, 0
        try:
            while self.step < last:
                started = time.perf_counter()
                logs = (self.step + 1) % settings.log_interval == 0 or self.step + 1 == last  # this update
                record = self._optimizer_step(with_metrics=logs)
                if record is None:
                    bad_in_a_row += 1
                    self.skipped += 1
                    if bad_in_a_row >= settings.max_bad_steps:
                        raise TrainingError(
                            f"{bad_in_a_row} steps in a row had a non-finite loss or gradient (step {self.step}): "
                            f"lower train.lr or check the data; {self._last_good()}"
                        )
                    continue
                bad_in_a_row = 0
                self.step += 1
                elapsed = time.perf_counter() - started
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{self.tokens_per_step / elapsed:,.0f}")
                if logs:
                    self._log_train(record, elapsed)
                evaluation = self._maybe_evaluate(last)
                self._maybe_checkpoint(last, evaluation)
        except KeyboardInterrupt:
            interrupted = True
            progress.close()
            why = f" by {self.signals.received}" if self.signals.received else ""
            if self.saved_step == self.step:
                where = ckpt.step_checkpoints(self.run_dir)[-1] if main else None
                if main:
                    print(f"\ninterrupted{why} at step {self.step}, already saved in {where}", file=sys.stderr)
            else:
                if main:
                    print(f"\ninterrupted{why} at step {self.step}: saving a checkpoint", file=sys.stderr)
                where = self._save(is_best=False)
                if main:
                    print(f"checkpoint saved in {where}; continue with --resume latest", file=sys.stderr)
        progress.close()
        final = evaluation.val_loss if evaluation is not None else None
        if not interrupted:
            self._finish(final)  # every rank: under FSDP the sample needs the shards of all
        self.log.close()
        return TrainResult(self.step, final, self.skipped, interrupted, self.run_dir)

    def _optimizer_step(self, with_metrics: bool) -> dict[str, Any] | None:
        """One update from `grad_accum` micro-batches; None when it was skipped. The decoder's
        training metrics (a routed decoder's usage, entropies, work) only `with_metrics`, on the
        steps that log them: reading them back would make the host wait for the device again."""
        settings = self.settings
        lr = learning_rate(self.step, settings)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.set_training_step(self.step, settings.max_steps)
        self.model.train()
        loss_sum = torch.zeros((), device=self.process.device)
        last_output: DecoderOutput | None = None
        with self.model.counting_window():
            for micro, tokens in enumerate(self.batches.take()):
                with self._no_sync(last=micro == settings.grad_accum - 1), self._autocast():
                    objective = compute_objective(self.forward_model, tokens)
                (objective.loss / settings.grad_accum).backward()
                loss_sum += objective.lm_loss.detach().float()
                last_output = objective.output
        self.batches.prefetch()  # the next step's data, drawn and copied while this step computes
        loss = loss_sum / settings.grad_accum
        grad_norm = parallel.clip_gradients(self.model, settings.grad_clip if settings.grad_clip > 0 else math.inf)
        finite, mean_loss, norm = self._step_figures(loss, grad_norm)
        if not finite:
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        record: dict[str, Any] = {"loss": mean_loss, "lr": lr, "grad_norm": norm}
        if with_metrics and last_output is not None:
            record.update(self.model.training_metrics(last_output))
        return record

    @contextlib.contextmanager
    def _no_sync(self, last: bool) -> Iterator[None]:
        """Gradients are all-reduced once per update, on the last micro-batch."""
        with parallel.gradient_sync(self.wrapped, enabled=last):
            yield

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        device, dtype = self.process.device.type, self.settings.dtype
        if dtype == "bfloat16" or (dtype == "auto" and device == "cuda"):
            return torch.autocast(device, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _step_figures(self, loss: Tensor, grad_norm: Tensor) -> tuple[bool, float, float]:
        """Whether every rank's loss and gradient are finite (every rank skips together, or none
        does), the loss averaged over ranks, and the gradient norm: one all-reduce and the
        step's one host-device synchronisation, after the backward (the forward and backward
        never wait for the device; tests/training/test_cuda.py proves it)."""
        bad = (~torch.isfinite(loss) | ~torch.isfinite(grad_norm)).float()
        figures = torch.stack([bad, loss.float(), grad_norm.float()])
        if self.process.distributed:
            dist.all_reduce(figures)  # sums: any bad rank makes it > 0; the norm is the same on every rank
            figures = figures / self.process.world_size
        any_bad, mean_loss, norm = figures.tolist()
        return any_bad == 0, mean_loss, norm

    # --- logging, evaluation, checkpoints -------------------------------------------------

    def _announce(self) -> None:
        n_params = sum(p.numel() for p in self.model.parameters())
        resumed = f", resuming at step {self.step}" if self.step else ""
        print(
            f"{self.model.kind} decoder, {n_params:,} parameters; vocabulary {self.tokenizer.vocab_size}; "
            f"{len(self.data.train):,} training tokens; {self.process.world_size} process(es) on "
            f"{self.process.device.type}; {self.tokens_per_step:,} tokens per step; run dir {self.run_dir}{resumed}"
        )

    def _log_train(self, record: dict[str, Any], elapsed: float) -> None:
        tokens_per_s = self.tokens_per_step / elapsed
        mfu = self.flops_per_step / elapsed / self.peak if self.peak else None
        self.log.write(
            {
                "kind": "train",
                "step": self.step,
                "tokens": self.step * self.tokens_per_step,
                "tokens_per_s": tokens_per_s,
                "mfu": mfu,
                "skipped_steps": self.skipped,
                **record,
            }
        )

    def _maybe_evaluate(self, last: int) -> Evaluation | None:
        if self.step % self.settings.eval_interval and self.step != last:
            return None
        evaluation = evaluate(
            self.model,
            self._val_batches(),
            self.settings.eval_route_samples,
            seed=stream_seed(self.settings.seed, self.process.rank, EVAL_STREAM),
        )
        self.log.write(
            {"kind": "eval", "step": self.step, "tokens": self.step * self.tokens_per_step, **evaluation.as_record()}
        )
        if self.process.is_main:
            routed = f", sampled routes {evaluation.sampled_route_loss:.4f}" if evaluation.sampled_route_loss else ""
            tqdm.write(f"step {self.step}: val loss {evaluation.val_loss:.4f} (ppl {evaluation.val_ppl:.2f}){routed}")
        return evaluation

    def _val_batches(self) -> list[Tensor]:
        """The same validation windows at every evaluation, split between the ranks."""
        generator = torch.Generator().manual_seed(stream_seed(self.settings.seed, 0, VAL_WINDOWS_STREAM))
        n_ctx = self.model.cfg.n_ctx
        batches = [
            self.data.sample_windows("val", self.settings.batch_size, n_ctx, generator)
            for _ in range(self.settings.eval_batches)
        ]
        mine = batches[self.process.rank :: self.process.world_size]
        return [batch.to(self.process.device) for batch in mine]

    def _maybe_checkpoint(self, last: int, evaluation: Evaluation | None) -> None:
        improved = evaluation is not None and evaluation.val_loss < self.best_val
        if improved and evaluation is not None:
            self.best_val = evaluation.val_loss
        if improved or self.step % self.settings.checkpoint_interval == 0 or self.step == last:
            self._save(is_best=improved)

    def _last_good(self) -> str:
        found = ckpt.step_checkpoints(self.run_dir)
        if found:
            return f"the last good checkpoint is {found[-1]}"
        return f"no checkpoint was written yet (the first comes at step {self.settings.checkpoint_interval})"

    def _save(self, is_best: bool) -> Path | None:
        """Write a checkpoint (rank 0; the others hand it their random streams); its folder on rank 0."""
        with self.signals.saving():
            return self._write_checkpoint(is_best)

    def _write_checkpoint(self, is_best: bool) -> Path | None:
        per_rank = {
            "data_rng": self.batches.generator_state(),  # before the batch drawn ahead
            "router_rng": self.model.route_rng_state(),
            "rng": rng.capture(),
        }
        gathered = [per_rank]
        if self.process.distributed:
            gathered = [{} for _ in range(self.process.world_size)]
            dist.all_gather_object(gathered, per_rank)
        # Under FSDP both gather the shards to rank 0 (every rank takes part); else no copy
        optimizer_state = parallel.full_optimizer_state(self.model, self.optimizer)
        model = parallel.full_model(self.model, lambda: build_model(self.config))
        if self.process.is_main:
            assert model is not None
            state = {
                "step": self.step,
                "best_val": self.best_val,
                "skipped": self.skipped,
                "optimizer": optimizer_state,
                "config": self.config.to_dict(),
                "tokenizer": self.tokenizer.to_json(),
                "data_rng": [g["data_rng"] for g in gathered],
                "router_rng": [g["router_rng"] for g in gathered],
                "rng": [g["rng"] for g in gathered],
            }
            where: Path | None = ckpt.save_checkpoint(
                self.run_dir, self.step, model, state, self.settings.keep_last, is_best
            )
        else:
            where = None
        self._barrier()
        self.saved_step = self.step
        return where

    def _finish(self, final: float | None) -> None:
        main = self.process.is_main
        if final is not None and main:
            print(
                f"final val loss {final:.4f} (perplexity {math.exp(final):.2f}) after {self.step} steps; "
                f"{self.skipped} skipped; checkpoints in {ckpt.checkpoints_dir(self.run_dir)}"
            )
        if self.settings.sample_tokens:
            model = parallel.full_model(self.model, lambda: build_model(self.config))
            if model is None or not main:
                return
            model = model.to(self.process.device)
            assert isinstance(model, DecoderEnds)
            prompt_len = max(model.min_prompt_len, 8)
            prompt = torch.as_tensor(self.data.val[:prompt_len].astype("int64"))[None].to(self.process.device)
            out = generate(
                model,
                prompt,
                self.settings.sample_tokens,
                temperature=0.8,
                top_k=40,
                generator=torch.Generator().manual_seed(self.settings.seed),
                n_decodable=self.tokenizer.vocab_size,  # a padded d_vocab's extra ids have no text
            )
            print("sample:", self.tokenizer.decode(out.tokens[0].tolist()))


def _check_fixed_settings(saved: RunConfig, current: RunConfig) -> None:
    for name in FIXED_ON_RESUME:
        before, now = getattr(saved.train, name), getattr(current.train, name)
        if before != now:
            raise ckpt.CheckpointError(
                f"train.{name}={now!r} cannot apply on resume: the checkpoint continues with {before!r} "
                f"(its tokenizer and random streams are restored); drop the override, or start a new run "
                "elsewhere with --set train.out_dir=PATH"
            )


def _check_same_model(saved: RunConfig, current: RunConfig) -> None:
    for section in ("model", "routing"):
        before, now = saved.to_dict()[section], current.to_dict()[section]
        if before != now:
            raise ckpt.CheckpointError(
                f"the checkpoint's {section} config differs from this run's ({before} vs {now}): resume with "
                "the same --config and --set options as the original run"
            )

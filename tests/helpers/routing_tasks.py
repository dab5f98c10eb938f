"""Synthetic data whose task the router can read from the routing prefix, and the numbers to
score a routed model against.

`MarkerChains`: each task is a low-entropy Markov chain over the same `n_symbols` symbols
(with probability 1 - noise the next symbol is the task's own permutation of the current one,
otherwise uniform). A sequence opens with `prefix_len` copies of its task's marker token, so
the routing prefix names the task, then runs its chain from a uniform first symbol. The two
permutations differ at every symbol, so a layer that has learned one chain is wrong about the
other at every transition: routing each task to its own layer is worth a lot of loss.
"""

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MarkerChains:
    n_symbols: int
    prefix_len: int
    noise: float
    permutations: Tensor  # [n_tasks, n_symbols]: task t's likely successor of symbol x

    @property
    def n_tasks(self) -> int:
        return int(self.permutations.shape[0])

    @property
    def d_vocab(self) -> int:
        """Symbols 0..n_symbols-1, then one marker token per task."""
        return self.n_symbols + self.n_tasks

    def transitions(self) -> Tensor:
        """[n_tasks, n_symbols, n_symbols]: P(next = j | current = i, task t)."""
        uniform = torch.full((self.n_tasks, self.n_symbols, self.n_symbols), self.noise / self.n_symbols)
        likely = torch.nn.functional.one_hot(self.permutations, self.n_symbols).float()
        return uniform + (1.0 - self.noise) * likely

    def sample(self, batch: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Tokens [batch, seq_len] and each sequence's task [batch] (tasks drawn uniformly)."""
        task = torch.randint(self.n_tasks, (batch,), generator=generator)
        tokens = torch.empty(batch, seq_len, dtype=torch.long)
        tokens[:, : self.prefix_len] = (self.n_symbols + task)[:, None]
        symbol = torch.randint(self.n_symbols, (batch,), generator=generator)
        for position in range(self.prefix_len, seq_len):
            tokens[:, position] = symbol
            follow = torch.rand(batch, generator=generator) >= self.noise
            anywhere = torch.randint(self.n_symbols, (batch,), generator=generator)
            symbol = torch.where(follow, self.permutations[task, symbol], anywhere)
        return tokens, task

    def true_loss(self, tokens: Tensor, task: Tensor) -> float:
        """Mean loss (nats/token) of the true generating process on these very sequences, over
        the targets `lm_loss(first_target=prefix_len)` scores: the floor for any model, on the
        same tokens (so without the sampling noise of comparing to the entropy)."""
        first = math.log(self.n_symbols)  # the first symbol after the prefix is uniform
        current, following = tokens[:, self.prefix_len : -1], tokens[:, self.prefix_len + 1 :]
        probability = self.transitions()[task[:, None], current, following]
        total = first * len(tokens) - probability.log().sum()
        return float(total) / (len(tokens) * (tokens.shape[1] - self.prefix_len))

    def transition_entropy(self) -> float:
        """Entropy (nats) of one chain step given the current symbol and the task."""
        top = 1.0 - self.noise + self.noise / self.n_symbols
        rest = self.noise / self.n_symbols
        return -(top * math.log(top)) - (self.n_symbols - 1) * rest * math.log(rest) if rest else 0.0

    def scored_entropy(self, seq_len: int) -> float:
        """The best achievable mean loss over the targets `lm_loss(first_target=prefix_len)` scores:
        the first symbol is uniform (ln n_symbols), every later one costs one transition entropy."""
        n_scored = seq_len - self.prefix_len
        first = math.log(self.n_symbols)
        return (first + (n_scored - 1) * self.transition_entropy()) / n_scored


def make_marker_chains(
    n_symbols: int = 12, prefix_len: int = 2, noise: float = 0.1, n_tasks: int = 2, seed: int = 0
) -> MarkerChains:
    """Seeded chains whose permutations disagree on every symbol (no shared transition)."""
    generator = torch.Generator().manual_seed(seed)
    permutations = [torch.randperm(n_symbols, generator=generator)]
    while len(permutations) < n_tasks:
        candidate = torch.randperm(n_symbols, generator=generator)
        if all(bool((candidate != other).all()) for other in permutations):
            permutations.append(candidate)
    return MarkerChains(n_symbols, prefix_len, noise, torch.stack(permutations))


def route_task_agreement(routes: Tensor, task: Tensor) -> float:
    """Fraction of sequences routed to their own task's route, under the assignment of distinct
    routes to tasks that makes this fraction largest. `routes` is [batch, steps]: a row's whole
    tuple of layers is its route. 1.0: the route names the task. 1 / n_tasks (or less): the
    route carries no task information, e.g. every sequence takes the same route."""
    route_ids = torch.unique(routes, dim=0, return_inverse=True)[1]
    n_tasks, n_routes = int(task.max()) + 1, int(route_ids.max()) + 1
    table = torch.zeros(n_tasks, n_routes)  # table[t, r]: sequences of task t on route r
    table.index_put_((task, route_ids), torch.ones(len(task)), accumulate=True)
    if n_routes < n_tasks:  # fewer routes than tasks: pad with routes nobody took
        table = torch.cat([table, torch.zeros(n_tasks, n_tasks - n_routes)], dim=1)
    best = max(
        sum(float(table[t, r]) for t, r in enumerate(assignment))
        for assignment in itertools.permutations(range(table.shape[1]), n_tasks)
    )
    return best / len(task)

"""Reinforcement learning: a preference-conditioned policy-gradient controller (AMC-style), in torch.

A tiny policy network writes the genome gene by gene. Its input for gene i is the episode's preference
vector w (one weight per objective, drawn from a Dirichlet with the searcher's numpy generator), a
learned embedding of gene i and the previous gene's value on [0, 1]. Its output for gene i is:

- float genes (and integer genes with more than `max_choices` values, which the space's `repair`
  rounds): a Gaussian on the unit interval, clipped to [0, 1] and mapped to [low, high]. The log-prob
  is that of the unclipped sample (as PPO does with bounded actions), so a gene can sit exactly on a
  bound (pruning ratios often should); the mean stays within [-0.05, 1.05], so at a bound about half
  the samples still differ and the gene can leave it again. A logistic-normal was tried first: it
  needs logits of -5 to come near a bound, and learned far slower on ZDT1 in our trials.
- integer genes with at most `max_choices` values: a categorical over the values.

Fixed genes are not asked for.

Each told result is scored, smaller is better, with its own preference: the augmented Chebyshev
function max_j w_j z_j + rho * sum_j w_j z_j of the objectives z normalised over the told results
(ideal: the best value told, among feasible results once there are any; nadir: the worst value on the
current front, so early poor results do not squash the objectives they were poor in). Infeasible
results score worse than any feasible one, less badly the smaller their violation; failed results
score as the worst result told. Because w is an input and varies per episode, the policy learns the
whole front, not one point of it.

Every `batch` told results the policy takes up to `epochs` Adam steps on PPO's clipped surrogate, per
gene (with `epochs=1` and nothing in flight this is plain REINFORCE). A result's advantage is the
leave-one-out mean score of the batch's other results, scored under *its* preference, minus its own
score: a batch-mean baseline that does not mistake a preference giving large scores for a poor result.
Advantages are standardised per batch; an entropy bonus per gene keeps the policy exploring. Adam moves
every weight by about the learning rate, which is a long way in distribution once a gene's spread is
small, so the steps are kept in a trust region: an update stops early once some gene's mean KL
divergence from the pre-update policy passes 2 * `kl_target`, and the learning rate is divided by 1.5
after an update that moved that far and multiplied by 1.5 after one that moved less than half the
target (within [lr / 100, 3 * lr]; the adaptive schedule of rl_games' PPO). Without it a wide gene
whose optimum lies inside its range drifted to a bound after first finding the optimum.

Asynchronous use: `ask` may run ahead of `tell`, and results may arrive in any order. Per candidate
asked and not yet told the searcher keeps its preference, its raw actions and their log-probs under
the policy that sampled them (the behaviour policy of the importance ratio). The state holds these, so
results of candidates asked before a restore still train the policy; a candidate that is never told
stays in that table. A result for a candidate this searcher did not ask (or told twice) joins the
history and the normalisation but does not train the policy.

Settings: `RLSettings` (learning rate, batch, epochs, trust region, network size, exploration, reward).
With the defaults the network has about 1,500 parameters, plus 8 per gene and 33 per value of the widest
categorical gene; an ask or a tell costs about a millisecond. The policy network is `_rl_policy.Policy`,
the scoring of told results `_rl_reward`.

Budget: the policy needs tens of updates to move, so plan for at least 20 batches, a few hundred
evaluations with the defaults. Measured, mean over seeds 0-4, one candidate in flight (hypervolume of
the normalised objectives against the reference point 1.1; random search in brackets): ZDT1 with 10
variables 0.61 (0.00) after 300 evaluations and 0.83 (0.00) after 1000, where the true front has 0.877;
DTLZ2 with 12 variables 0.24 (0.06) and 0.41 (0.13), true front 0.807. Seeds vary a lot at 300
evaluations. For expensive evaluations a smaller `batch` (8) learns sooner from noisier updates.

The policy is tiny: on a busy machine torch's intra-op thread pool can make it ten times slower, not
faster. Where that matters the driver may run it under `torch.set_num_threads(1)` (the searcher does not
change global torch state itself).

Deterministic: the network is initialised and sampled with a `torch.Generator` seeded from the
searcher's seed (the global torch RNG is never touched), preferences come from the searcher's numpy
generator, so the same seed and the same told results give the same candidates. `state_dict()` is
plain JSON: the network and Adam state as nested lists, the torch generator state as a list of bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from decomp.errors import SearchError
from search.base import Searcher, Told
from search.records import Candidate, Evaluation
from search.registry import register
from search.searchers._rl_policy import (
    DTYPE,
    MAX_STD,
    MIN_STD,
    Policy,
    bounded_mean,
    normal_log_prob,
    tensor_from_json,
    tensor_to_json,
    to_unit,
)
from search.searchers._rl_reward import chebyshev_advantages, hypervolume_advantages, usable
from search.searchers._shared import derived_seed
from search.settings import Settings, check_choice, check_number

__all__ = ["REWARDS", "RLSearcher", "RLSettings"]

REWARDS = ("chebyshev", "hypervolume")

_MASKED = -1e9  # logit of a value an integer gene does not have (finite, so no 0 * inf = nan)


@dataclass(frozen=True)
class RLSettings(Settings):
    """The rl searcher's settings."""

    lr: float = 0.01
    """Initial Adam learning rate (adapted to each update's KL divergence, see the module docstring)."""
    batch: int = 16
    """Told results per policy update; at least 2."""
    epochs: int = 4
    """At most this many gradient steps per update on the same batch."""
    clip: float = 0.2
    """PPO ratio clip."""
    kl_target: float = 0.05
    """Per-gene KL divergence an update aims at."""
    hidden: int = 32
    """Width of the two tanh hidden layers."""
    embed: int = 8
    """Size of the learned gene embedding."""
    entropy: float = 0.02
    """Entropy bonus per gene. Much more keeps float genes too loose to settle (0.1 failed on DTLZ2); less
    lets the policy collapse before it has learned the preference."""
    init_std: float = 0.4
    """Initial spread of float genes on [0, 1], in (0.01, 1)."""
    concentration: float = 1.0
    """Dirichlet concentration of the preferences (1 = uniform on the simplex; smaller favours the front's
    extremes, larger its middle)."""
    rho: float = 0.05
    """Weight of the augmentation term, which breaks ties toward Pareto-optimal points."""
    max_choices: int = 32
    """Integer genes with at most this many values get a categorical output; at least 2."""
    reward: str = "chebyshev"
    """How a result is scored. "chebyshev": the preference-conditioned scalarisation of the module
    docstring; "hypervolume": its gain in hypervolume over the feasible front told before its batch (minus
    its distance to that front when dominated), which rewards extending the front directly. On the joint
    resnet18 benchmark (4 objectives, 300 evaluations) the Chebyshev reward ends below random search and the
    hypervolume reward above it (BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        def number(name: str, rule: str, holds, integer: bool = False) -> float | int:
            return check_number("rl", name, getattr(self, name), rule, holds, integer=integer)

        checked = {name: number(name, "> 0", lambda v: v > 0) for name in ("lr", "clip", "kl_target", "concentration")}
        checked |= {
            name: number(name, "a whole number > 0", lambda v: v > 0, True) for name in ("epochs", "hidden", "embed")
        }
        checked |= {name: number(name, ">= 0", lambda v: v >= 0) for name in ("entropy", "rho")}
        checked["init_std"] = number("init_std", f"in ({MIN_STD}, {MAX_STD})", lambda v: MIN_STD < v < MAX_STD)
        checked["batch"] = number(
            "batch", ">= 2 (a whole number: the baseline compares results)", lambda v: v >= 2, True
        )
        checked["max_choices"] = number("max_choices", "a whole number >= 2", lambda v: v >= 2, True)
        self._set(**checked, reward=check_choice("rl", "reward", self.reward, REWARDS))


@register
class RLSearcher(Searcher):
    """Preference-conditioned policy gradient over the genome; see the module docstring."""

    name = "rl"
    settings_class = RLSettings
    settings: RLSettings

    def _build(self) -> None:
        settings, space = self.settings, self.space
        self._std_offset = math.log((settings.init_std - MIN_STD) / (MAX_STD - settings.init_std))
        # the genes the policy decides, and for each its number of categorical values (0: continuous)
        self._active = space.free
        self._choices = [
            int(g.high - g.low) + 1 if g.integer and g.high - g.low + 1 <= settings.max_choices else 0
            for g in (space.genes[i] for i in self._active)
        ]
        width = max(1, *self._choices)  # at least one categorical output, so the heads keep one shape
        self._mask = torch.full((len(self._active), width), _MASKED, dtype=DTYPE)
        for k, c in enumerate(self._choices):
            self._mask[k, :c] = 0.0
        self._gen = torch.Generator().manual_seed(derived_seed(self.seed, 1))
        self.policy = Policy(len(self._active), len(self.objectives), settings.hidden, settings.embed, width, self._gen)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=settings.lr, foreach=False)
        self._pending: dict[int, dict[str, Any]] = {}  # asked, not told: preference, actions, log-prob
        self._proposed: list[dict[str, Any]] = []
        self._buffer: list[dict[str, Any]] = []  # told since the last update, with their actions
        self.updates = 0

    # -- asking --------------------------------------------------------------------------------------

    def ask(self, n: int = 1) -> list[Candidate]:
        """The base's `ask`, plus a record per candidate of what the policy sampled for it."""
        candidates = super().ask(n)
        proposed = candidates[len(candidates) - len(self._proposed) :]  # after the space's baselines
        for candidate, record in zip(proposed, self._proposed, strict=True):
            self._pending[candidate.id] = record
        self._proposed = []
        return candidates

    def _propose(self, n: int) -> list[Sequence[float]]:
        prefs = self.rng.dirichlet(np.full(len(self.objectives), self.settings.concentration), size=n)
        w = torch.tensor(prefs, dtype=DTYPE)
        actions = torch.zeros(n, len(self._active), dtype=DTYPE)
        logp = torch.zeros(n, len(self._active), dtype=DTYPE)
        prev = torch.zeros(n, dtype=DTYPE)
        with torch.no_grad():
            for k, c in enumerate(self._choices):
                out = self.policy(w, torch.full((n,), k, dtype=torch.long), prev)
                if c:
                    logits = torch.log_softmax(out[:, 2:] + self._mask[k], dim=1)
                    a = torch.multinomial(logits.exp(), 1, generator=self._gen)[:, 0]
                    logp[:, k] = logits.gather(1, a[:, None])[:, 0]
                    actions[:, k] = a.to(DTYPE)
                else:
                    mean, std = bounded_mean(out[:, 0]), self._std(out[:, 1])
                    eps = torch.randn(n, generator=self._gen, dtype=DTYPE)
                    actions[:, k] = mean + std * eps
                    logp[:, k] = normal_log_prob(actions[:, k], mean, std)
                prev = to_unit(actions[:, k], c)
        self._proposed = [
            {"w": prefs[i].tolist(), "a": actions[i].tolist(), "logp": logp[i].tolist()} for i in range(n)
        ]
        return [self._genome(row) for row in actions.tolist()]

    def _genome(self, actions: list[float]) -> list[float | int]:
        """The genome of one row of actions: a categorical gene's value index, a float gene's unit value."""
        values = [
            g.low + a if c else g.low + min(1.0, max(0.0, a)) * (g.high - g.low)
            for g, c, a in zip(self.space.free_genes, self._choices, actions, strict=True)
        ]
        return self.space.fill(values)

    def _std(self, raw: torch.Tensor) -> torch.Tensor:
        """Smoothly bounded: a clamp would stop the gradient (entropy bonus included) at the bound."""
        return MIN_STD + (MAX_STD - MIN_STD) * torch.sigmoid(raw + self._std_offset)

    # -- learning ------------------------------------------------------------------------------------

    def _learn(self, candidate: Candidate, evaluation: Evaluation, told: Told) -> None:
        record = self._pending.pop(candidate.id, None) if candidate.searcher == self.name else None
        if record is None:
            return  # not asked by this searcher (or told twice): no actions to learn from
        values = list(told.values) if usable(told) else None
        entry = {**record, "id": candidate.id, "values": values, "v": told.violation if values is not None else 0.0}
        self._buffer.append(entry)
        if len(self._buffer) >= self.settings.batch:
            self._update(self._buffer)
            self._buffer = []

    def _update(self, batch: list[dict[str, Any]]) -> None:
        """Up to `epochs` clipped policy-gradient steps on a batch of told results, then the learning rate
        adapted to the step's KL divergence."""
        settings = self.settings
        w = torch.tensor([r["w"] for r in batch], dtype=DTYPE)
        advantage = torch.tensor(self._advantages(batch), dtype=DTYPE).repeat_interleave(len(self._active))
        old_logp = torch.tensor([r["logp"] for r in batch], dtype=DTYPE).reshape(-1)
        actions = torch.tensor([r["a"] for r in batch], dtype=DTYPE)
        b, g = actions.shape
        prev = torch.zeros_like(actions)
        for k, c in enumerate(self._choices[:-1]):
            prev[:, k + 1] = to_unit(actions[:, k], c)
        inputs = (w.repeat_interleave(g, dim=0), torch.arange(g).repeat(b), prev.reshape(-1))
        categorical = torch.tensor([c > 0 for c in self._choices]).repeat(b)
        flat = actions.reshape(-1)
        index = torch.where(categorical, flat, 0).long()
        before = None
        for _ in range(settings.epochs):
            mean, std, logits = self._distributions(*inputs)
            if before is None:
                before = (mean.detach(), std.detach(), logits.detach())
            elif self._kl(before, (mean, std, logits), categorical, g) > 2 * settings.kl_target:
                break  # this batch has moved the policy far enough
            logp_rows = torch.where(
                categorical, logits.gather(1, index[:, None])[:, 0], normal_log_prob(flat, mean, std)
            )
            entropy_rows = torch.where(categorical, -(logits.exp() * logits).sum(1), torch.log(std))
            ratio = torch.exp(logp_rows - old_logp)
            clipped = torch.clamp(ratio, 1 - settings.clip, 1 + settings.clip)
            surrogate = torch.minimum(ratio * advantage, clipped * advantage)
            loss = -(surrogate + settings.entropy * entropy_rows).reshape(b, g).sum(1).mean()
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            kl = self._kl(before, self._distributions(*inputs), categorical, g)
        self._adapt_lr(kl)
        self.updates += 1

    def _distributions(self, w: torch.Tensor, gene: torch.Tensor, prev: torch.Tensor):
        """Per row: the float gene's mean and std, and the integer gene's log-probabilities."""
        out = self.policy(w, gene, prev)
        return bounded_mean(out[:, 0]), self._std(out[:, 1]), torch.log_softmax(out[:, 2:] + self._mask[gene], dim=1)

    @staticmethod
    def _kl(before, after, categorical: torch.Tensor, genes: int) -> float:
        """KL(before || after) averaged over the batch, for the gene that moved most."""
        (m0, s0, l0), (m1, s1, l1) = before, after
        gaussian = torch.log(s1 / s0) + (s0**2 + (m0 - m1) ** 2) / (2 * s1**2) - 0.5
        discrete = (l0.exp() * (l0 - l1)).sum(1)
        rows = torch.where(categorical, discrete, gaussian)
        return float(rows.detach().reshape(-1, genes).mean(0).max())

    def _adapt_lr(self, kl: float) -> None:
        """Shrink the step after a jump, grow it after a crawl (as rl_games' adaptive PPO schedule does):
        Adam moves every weight by about lr, which is far in distribution once a gene's std is small."""
        group, lr, target = self.optimizer.param_groups[0], self.settings.lr, self.settings.kl_target
        if kl > 2 * target:
            group["lr"] = max(group["lr"] / 1.5, lr / 100)
        elif kl < target / 2:
            group["lr"] = min(group["lr"] * 1.5, lr * 3)

    def _advantages(self, batch: list[dict[str, Any]]) -> list[float]:
        """Per result of the batch, larger is better: see `_rl_reward`."""
        if self.settings.reward == "hypervolume":
            return hypervolume_advantages(batch, self.history)
        return chebyshev_advantages(batch, self.history, self.front(), self.settings.rho)

    # -- state ---------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        optimizer = self.optimizer.state_dict()
        return {
            "policy": {k: v.tolist() for k, v in self.policy.state_dict().items()},
            "adam": {str(i): {k: tensor_to_json(v) for k, v in s.items()} for i, s in optimizer["state"].items()},
            "generator": self._gen.get_state().tolist(),
            "pending": {str(i): r for i, r in self._pending.items()},
            "buffer": self._buffer,
            "updates": self.updates,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _load(self, state: dict[str, Any]) -> None:
        try:
            params = {k: torch.tensor(v, dtype=DTYPE) for k, v in state["policy"].items()}
            self.policy.load_state_dict(params)
            optimizer = self.optimizer.state_dict()
            optimizer["state"] = {
                int(i): {k: tensor_from_json(v) for k, v in s.items()} for i, s in state["adam"].items()
            }
            self.optimizer.load_state_dict(optimizer)
        except (KeyError, RuntimeError, ValueError) as error:
            raise SearchError(
                f"the rl searcher's saved policy does not fit this one ({error}); resume with the same space, "
                "objectives and settings (hidden, embed, max_choices) the run was started with"
            ) from error
        self._gen.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
        self._pending = {int(i): r for i, r in state["pending"].items()}
        self._proposed = []
        self._buffer = list(state["buffer"])
        self.updates = int(state["updates"])
        self.optimizer.param_groups[0]["lr"] = float(state["lr"])

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

Settings (keyword arguments of the constructor, or of `make_searcher("rl", ...)`):

- `lr` (0.01): initial Adam learning rate (adapted as above).
- `batch` (16): told results per policy update.
- `epochs` (4): at most this many gradient steps per update on the same batch.
- `clip` (0.2): PPO ratio clip. `kl_target` (0.05): per-gene KL divergence an update aims at.
- `hidden` (32): width of the two tanh hidden layers. `embed` (8): size of the learned gene embedding.
  With the defaults the network has about 1,500 parameters, plus 8 per gene and 33 per value of the
  widest categorical gene; an ask or a tell costs about a millisecond.
- `entropy` (0.02): entropy bonus per gene. Much more keeps float genes too loose to settle (0.1
  failed on DTLZ2); less lets the policy collapse before it has learned the preference.
- `init_std` (0.4): initial spread of float genes on [0, 1], in (0.01, 1).
- `concentration` (1.0): Dirichlet concentration of the preferences (1 = uniform on the simplex;
  smaller favours the front's extremes, larger its middle).
- `rho` (0.05): weight of the augmentation term, which breaks ties toward Pareto-optimal points.
- `max_choices` (32): integer genes with at most this many values get a categorical output.
- `reward` ("chebyshev"): how a result is scored. "chebyshev" as above (the preference-conditioned
  scalarisation); "hypervolume": its gain in hypervolume over the feasible front told before its batch
  (minus its distance to that front when dominated), which rewards extending the front directly. On the
  joint resnet18 benchmark (4 objectives, 300 evaluations) the Chebyshev reward ends below random search
  and the hypervolume reward above it (BENCHMARKS.md).

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
from typing import Any

import numpy as np
import torch
from torch import nn

from decomp.errors import SearchError
from search.base import Searcher, Told, register
from search.records import Candidate, Constraint, Evaluation, Objective
from search.space import Space

REWARDS = ("chebyshev", "hypervolume")

__all__ = ["RLSearcher"]

_DTYPE = torch.float64
_REACH = 0.55  # float means live in [0.5 - _REACH, 0.5 + _REACH]: the bounds are reachable, never left far behind
_MIN_STD, _MAX_STD = 0.01, 1.0

_MASKED = -1e9  # logit of a value an integer gene does not have (finite, so no 0 * inf = nan)
_INFEASIBLE_MARGIN = 0.1  # infeasible scores start this far above the worst feasible score


class _Policy(nn.Module):
    """Preference- and gene-conditioned MLP: (w, gene, previous value) -> Gaussian and categorical heads."""

    def __init__(self, genes: int, objectives: int, hidden: int, embed: int, choices: int, gen: torch.Generator):
        super().__init__()
        d_in = objectives + embed + 1

        def uniform(*shape: int, scale: float) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, dtype=_DTYPE).uniform_(-scale, scale, generator=gen))

        self.embedding = uniform(genes, embed, scale=1.0)
        self.w1, self.b1 = uniform(hidden, d_in, scale=d_in**-0.5), uniform(hidden, scale=d_in**-0.5)
        self.w2, self.b2 = uniform(hidden, hidden, scale=hidden**-0.5), uniform(hidden, scale=hidden**-0.5)
        # small output weights: the initial policy is the same broad distribution for every gene and w
        self.w3 = uniform(2 + choices, hidden, scale=0.01 * hidden**-0.5)
        self.b3 = nn.Parameter(torch.zeros(2 + choices, dtype=_DTYPE))

    def forward(self, w: torch.Tensor, gene: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        x = torch.cat([w, self.embedding[gene], prev[:, None]], dim=1)
        x = torch.tanh(nn.functional.linear(x, self.w1, self.b1))
        x = torch.tanh(nn.functional.linear(x, self.w2, self.b2))
        return nn.functional.linear(x, self.w3, self.b3)


@register
class RLSearcher(Searcher):
    """Preference-conditioned policy gradient over the genome; see the module docstring."""

    name = "rl"

    def __init__(
        self,
        space: Space,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint] = (),
        seed: int = 0,
        *,
        lr: float = 0.01,
        batch: int = 16,
        epochs: int = 4,
        clip: float = 0.2,
        kl_target: float = 0.05,
        hidden: int = 32,
        embed: int = 8,
        entropy: float = 0.02,
        init_std: float = 0.4,
        concentration: float = 1.0,
        rho: float = 0.05,
        max_choices: int = 32,
        reward: str = "chebyshev",
    ):
        super().__init__(space, objectives, constraints, seed)
        _check_settings(
            lr=lr, batch=batch, epochs=epochs, clip=clip, kl_target=kl_target, hidden=hidden, embed=embed,
            entropy=entropy, init_std=init_std, concentration=concentration, rho=rho, max_choices=max_choices,
        )  # fmt: skip
        self.batch, self.epochs, self.clip, self.entropy = int(batch), int(epochs), float(clip), float(entropy)
        self.lr, self.kl_target = float(lr), float(kl_target)
        self.concentration, self.rho = float(concentration), float(rho)
        if reward not in REWARDS:
            raise SearchError(f"rl: unknown reward {reward!r}; valid: {', '.join(REWARDS)}")
        self.reward = reward
        self._std_offset = math.log((init_std - _MIN_STD) / (_MAX_STD - init_std))
        # the genes the policy decides, and for each its number of categorical values (0: continuous)
        self._active = [i for i, g in enumerate(space.genes) if not g.fixed]
        self._choices = [
            int(g.high - g.low) + 1 if g.integer and g.high - g.low + 1 <= max_choices else 0
            for g in (space.genes[i] for i in self._active)
        ]
        width = max(1, *self._choices)  # at least one categorical output, so the heads keep one shape
        self._mask = torch.full((len(self._active), width), _MASKED, dtype=_DTYPE)
        for k, c in enumerate(self._choices):
            self._mask[k, :c] = 0.0
        self._gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, 1]).generate_state(1)[0]))
        self.policy = _Policy(len(self._active), len(self.objectives), int(hidden), int(embed), width, self._gen)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=float(lr), foreach=False)
        self._pending: dict[int, dict[str, Any]] = {}  # asked, not told: preference, actions, log-prob
        self._proposed: list[dict[str, Any]] = []
        self._buffer: list[dict[str, Any]] = []  # told since the last update, with their actions
        self.updates = 0

    # -- asking --------------------------------------------------------------------------------------

    def ask(self, n: int = 1) -> list[Candidate]:
        """The base's `ask`, plus a record per candidate of what the policy sampled for it."""
        candidates = super().ask(n)
        for candidate, record in zip(candidates, self._proposed, strict=True):
            self._pending[candidate.id] = record
        self._proposed = []
        return candidates

    def _propose(self, n: int) -> list[Sequence[float]]:
        prefs = self.rng.dirichlet(np.full(len(self.objectives), self.concentration), size=n)
        w = torch.tensor(prefs, dtype=_DTYPE)
        actions = torch.zeros(n, len(self._active), dtype=_DTYPE)
        logp = torch.zeros(n, len(self._active), dtype=_DTYPE)
        prev = torch.zeros(n, dtype=_DTYPE)
        with torch.no_grad():
            for k, c in enumerate(self._choices):
                out = self.policy(w, torch.full((n,), k, dtype=torch.long), prev)
                if c:
                    logits = torch.log_softmax(out[:, 2:] + self._mask[k], dim=1)
                    a = torch.multinomial(logits.exp(), 1, generator=self._gen)[:, 0]
                    logp[:, k] = logits.gather(1, a[:, None])[:, 0]
                    actions[:, k] = a.to(_DTYPE)
                else:
                    mean, std = self._mean(out[:, 0]), self._std(out[:, 1])
                    eps = torch.randn(n, generator=self._gen, dtype=_DTYPE)
                    actions[:, k] = mean + std * eps
                    logp[:, k] = _normal_log_prob(actions[:, k], mean, std)
                prev = self._unit(actions[:, k], c)
        self._proposed = [
            {"w": prefs[i].tolist(), "a": actions[i].tolist(), "logp": logp[i].tolist()} for i in range(n)
        ]
        return [self._genome(row) for row in actions.tolist()]

    def _genome(self, actions: list[float]) -> list[float]:
        genome = [g.low for g in self.space.genes]
        for i, c, a in zip(self._active, self._choices, actions, strict=True):
            gene = self.space.genes[i]
            genome[i] = gene.low + a if c else gene.low + min(1.0, max(0.0, a)) * (gene.high - gene.low)
        return genome

    def _std(self, raw: torch.Tensor) -> torch.Tensor:
        """Smoothly bounded: a clamp would stop the gradient (entropy bonus included) at the bound."""
        return _MIN_STD + (_MAX_STD - _MIN_STD) * torch.sigmoid(raw + self._std_offset)

    @staticmethod
    def _mean(raw: torch.Tensor) -> torch.Tensor:
        return 0.5 + _REACH * torch.tanh(raw / _REACH)

    @staticmethod
    def _unit(a: torch.Tensor, choices: int) -> torch.Tensor:
        """An action as a value on [0, 1], the next gene's 'previous value' input."""
        return a / (choices - 1) if choices else torch.clamp(a, 0.0, 1.0)

    # -- learning ------------------------------------------------------------------------------------

    def _learn(self, candidate: Candidate, evaluation: Evaluation, told: Told) -> None:
        record = self._pending.pop(candidate.id, None) if candidate.searcher == self.name else None
        if record is None:
            return  # not asked by this searcher (or told twice): no actions to learn from
        values = list(told.values) if _usable(told) else None
        entry = {**record, "id": candidate.id, "values": values, "v": told.violation if values is not None else 0.0}
        self._buffer.append(entry)
        if len(self._buffer) >= self.batch:
            self._update(self._buffer)
            self._buffer = []

    def _update(self, batch: list[dict[str, Any]]) -> None:
        """Up to `epochs` clipped policy-gradient steps on a batch of told results, then the learning rate
        adapted to the step's KL divergence."""
        w = torch.tensor([r["w"] for r in batch], dtype=_DTYPE)
        advantage = torch.tensor(self._advantages(batch), dtype=_DTYPE).repeat_interleave(len(self._active))
        old_logp = torch.tensor([r["logp"] for r in batch], dtype=_DTYPE).reshape(-1)
        actions = torch.tensor([r["a"] for r in batch], dtype=_DTYPE)
        b, g = actions.shape
        prev = torch.zeros_like(actions)
        for k, c in enumerate(self._choices[:-1]):
            prev[:, k + 1] = self._unit(actions[:, k], c)
        inputs = (w.repeat_interleave(g, dim=0), torch.arange(g).repeat(b), prev.reshape(-1))
        categorical = torch.tensor([c > 0 for c in self._choices]).repeat(b)
        flat = actions.reshape(-1)
        index = torch.where(categorical, flat, 0).long()
        before = None
        for _ in range(self.epochs):
            mean, std, logits = self._distributions(*inputs)
            if before is None:
                before = (mean.detach(), std.detach(), logits.detach())
            elif self._kl(before, (mean, std, logits), categorical, g) > 2 * self.kl_target:
                break  # this batch has moved the policy far enough
            logp_rows = torch.where(
                categorical, logits.gather(1, index[:, None])[:, 0], _normal_log_prob(flat, mean, std)
            )
            entropy_rows = torch.where(categorical, -(logits.exp() * logits).sum(1), torch.log(std))
            ratio = torch.exp(logp_rows - old_logp)
            clipped = torch.clamp(ratio, 1 - self.clip, 1 + self.clip)
            surrogate = torch.minimum(ratio * advantage, clipped * advantage)
            loss = -(surrogate + self.entropy * entropy_rows).reshape(b, g).sum(1).mean()
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
        return self._mean(out[:, 0]), self._std(out[:, 1]), torch.log_softmax(out[:, 2:] + self._mask[gene], dim=1)

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
        group = self.optimizer.param_groups[0]
        if kl > 2 * self.kl_target:
            group["lr"] = max(group["lr"] / 1.5, self.lr / 100)
        elif kl < self.kl_target / 2:
            group["lr"] = min(group["lr"] * 1.5, self.lr * 3)

    def _advantages(self, batch: list[dict[str, Any]]) -> list[float]:
        """Per result: the leave-one-out batch mean of scores under its preference minus its own score,
        standardised over the batch (larger is better); or, with `reward="hypervolume"`, its hypervolume
        contribution to the front told before the batch, less the batch mean, standardised."""
        if self.reward == "hypervolume":
            gain = self._contributions(batch)
            advantage = gain - gain.mean()
            std = advantage.std()
            return (advantage / std if std > 1e-12 else np.zeros(len(batch))).tolist()
        scores = self._scores(batch)  # [i, j]: result j scored under result i's preference
        own = np.diag(scores).copy()
        n = len(batch)
        advantage = (scores.sum(axis=1) - own) / (n - 1) - own
        std = advantage.std()
        return (advantage / std if std > 1e-12 else np.zeros(n)).tolist()

    def _contributions(self, batch: list[dict[str, Any]]) -> np.ndarray:
        """Each result's gain in hypervolume over the feasible front of everything told before this batch
        (objectives normalised by the told range, reference 1.1); a dominated result scores minus its
        additive distance to that front, an infeasible one below every feasible one, a failed one lowest."""
        from search.pareto import Normalizer, hypervolume, non_dominated

        told = [t for t in self.history if _usable(t)]
        batch_ids = {r["id"] for r in batch}
        before = np.array([t.values for t in told if t.feasible and t.id not in batch_ids])
        if len(told) < 2:
            return np.zeros(len(batch))
        points = np.array([t.values for t in told])
        normalizer = Normalizer.from_points(points)
        front = normalizer(before[non_dominated(before)]) if len(before) else np.zeros((0, points.shape[1]))
        base = hypervolume(front) if len(front) else 0.0
        out = np.zeros(len(batch))
        for j, r in enumerate(batch):
            if r["values"] is None:
                out[j] = -3.0
                continue
            p = normalizer(np.asarray(r["values"], dtype=np.float64)[None, :])
            if r["v"] > 0:
                out[j] = -2.0 - min(1.0, r["v"])
                continue
            gain = hypervolume(np.vstack([front, p])) - base if len(front) else hypervolume(p)
            out[j] = gain if gain > 0 else -float(np.min(np.max(p - front, axis=1))) if len(front) else 0.0
        return out

    def _scores(self, batch: list[dict[str, Any]]) -> np.ndarray:
        """Scores, smaller is better, of every result under every preference of the batch.

        Feasible results: augmented Chebyshev of the objectives normalised over all told results, from
        the best value (ideal; among feasible results once there are any) to the worst value on the
        current front (nadir; the worst value told where the front has no spread), so early poor results
        do not squash the objectives they were poor in. Infeasible results score above any feasible
        result told, more the larger their violation; failed results score as the worst result told."""
        failed = np.array([r["values"] is None for r in batch])
        told = [t for t in self.history if _usable(t)]
        if failed.all() or not told:
            return np.zeros((len(batch), len(batch)))
        points = np.array([t.values for t in told])
        feasible = np.array([t.violation == 0 for t in told])
        low = points[feasible].min(axis=0) if feasible.any() else points.min(axis=0)
        high = points.max(axis=0)
        front = [t for t in self.front() if _usable(t)]
        nadir = np.array([t.values for t in front]).max(axis=0) if front else high
        span = np.where(nadir > low, nadir - low, np.where(high > low, high - low, 1.0))
        max_violation = max(t.violation for t in told)
        values = np.array([r["values"] if r["values"] is not None else high for r in batch])
        w = np.array([r["w"] for r in batch])
        weighted = w[:, None, :] * ((values - low) / span)[None, :, :]
        scores = weighted.max(axis=2) + self.rho * weighted.sum(axis=2)
        worst_feasible = (1 + self.rho) * float(((high - low) / span).max())
        violation = np.array([r["v"] if r["values"] is not None else 0.0 for r in batch])
        infeasible = violation > 0
        if infeasible.any():
            scores[:, infeasible] = worst_feasible + _INFEASIBLE_MARGIN + violation[infeasible] / max_violation
        worst = worst_feasible + (_INFEASIBLE_MARGIN + 1 if max_violation > 0 else 0.0)
        scores[:, failed] = worst
        return scores

    # -- state ---------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        optimizer = self.optimizer.state_dict()
        return {
            "policy": {k: v.tolist() for k, v in self.policy.state_dict().items()},
            "adam": {str(i): {k: _to_json(v) for k, v in s.items()} for i, s in optimizer["state"].items()},
            "generator": self._gen.get_state().tolist(),
            "pending": {str(i): r for i, r in self._pending.items()},
            "buffer": self._buffer,
            "updates": self.updates,
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _load(self, state: dict[str, Any]) -> None:
        try:
            params = {k: torch.tensor(v, dtype=_DTYPE) for k, v in state["policy"].items()}
            self.policy.load_state_dict(params)
            optimizer = self.optimizer.state_dict()
            optimizer["state"] = {int(i): {k: _from_json(v) for k, v in s.items()} for i, s in state["adam"].items()}
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


def _check_settings(**settings: float) -> None:
    positive = ("lr", "batch", "epochs", "clip", "kl_target", "hidden", "embed", "concentration")
    for name in positive:
        if not settings[name] > 0:
            raise SearchError(f"rl searcher: {name} must be > 0, got {settings[name]}")
    for name in ("entropy", "rho"):
        if not settings[name] >= 0:
            raise SearchError(f"rl searcher: {name} must be >= 0, got {settings[name]}")
    if not _MIN_STD < settings["init_std"] < _MAX_STD:
        raise SearchError(f"rl searcher: init_std must be in ({_MIN_STD}, {_MAX_STD}), got {settings['init_std']}")
    if settings["batch"] < 2:
        raise SearchError(f"rl searcher: batch must be >= 2 (the baseline compares results), got {settings['batch']}")
    if settings["max_choices"] < 2:
        raise SearchError(f"rl searcher: max_choices must be >= 2, got {settings['max_choices']}")


def _normal_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def _usable(told: Told) -> bool:
    """Complete with finite values and violation (a hand-built evaluation may carry inf or NaN)."""
    return told.values is not None and all(math.isfinite(v) for v in told.values) and math.isfinite(told.violation)


def _to_json(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {"tensor": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "tensor" in value:
        return torch.tensor(value["tensor"], dtype=getattr(torch, value["dtype"]))
    return value

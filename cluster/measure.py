"""Measuring a pruned candidate at a fidelity level: its accuracy and agreement, and the weights that gave them.

The levels (`cluster.config.AccuracySpec.levels`) are, cheapest first:

- `bn`: the plan applied physically and every BatchNorm's statistics re-estimated on `bn_batches` training
  batches, no gradient step (adaptive BN: the cheap score that ranks candidates as fine-tuning would);
- `short` / `full`: the same, then `short_epochs` / `finetune_epochs` of fine-tuning (N:M and unstructured
  sparsity held by masks while it trains, folded in after) at `accuracy.lr`. Where the job trains its base
  (`train:`), fine-tuning retrains with the base's recipe (optimizer, weight decay, augmentation), as Han
  et al. retrain a pruned network: a candidate is not trained on easier terms than its base.

The unpruned model (a plan that `prunes` nothing) is measured as it is at every level: it has nothing to
recover, and it is the model the user brought (or the job trained). Each level starts from the unpruned
weights, so a result depends on the candidate and the level only.
Selection reads the validation split carved from the training data (`accuracy`, `agreement`); the test
split is measured for the report (`test_accuracy`, `test_agreement`). Jobs without data measure agreement
on seeded random inputs, at the `bn` level only (nothing to recalibrate or train on). The weights come back
as safetensors bytes in the physically pruned layout, so an export loads them into the pruned model as is.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from cluster.config import JobConfig
from decomp.errors import DecompError, SpecError
from search.records import Candidate

__all__ = ["AGREEMENT_SAMPLES", "Measurer", "module_bytes"]

AGREEMENT_SAMPLES = 256  # random inputs for `agreement` when the job has no data and no max_samples

Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor | None]


class Measurer:
    """What measuring needs, built once per evaluator: the splits (or probe inputs), the unpruned reference
    and the device; `measure` runs one candidate at one level."""

    def __init__(
        self,
        config: JobConfig,
        model: nn.Module,
        inputs: tuple[torch.Tensor, ...],
        measured: Sequence[str],
        index=None,
    ) -> None:
        from decomp.data import load_data

        self.config, self.model, self.measured = config, model, tuple(measured)
        self.index = index  # the model's coupling groups (a GroupIndex), so each candidate does not find them again
        accuracy = config.accuracy
        self.one = tuple(x[:1] for x in inputs)  # apply_plan checks the pruned model on one sample
        self.seed = config.searcher.seed
        self.data = None
        if config.data:
            self.data = load_data(config.data).with_validation(accuracy.validation, seed=self.seed)
            self.selection = self._batches(self.data.validation)
            self.report = self._batches(self.data.test)
        else:
            count = accuracy.max_samples or AGREEMENT_SAMPLES
            gen = torch.Generator().manual_seed(self.seed)
            probe = tuple(_random_like(x, count, gen) for x in inputs)
            size = accuracy.batch_size
            self.selection = [(tuple(x[i : i + size] for x in probe), None) for i in range(0, count, size)]
            self.report = []
        gpu = config.evaluators.gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if gpu else "cpu")
        # plans apply to the model on the CPU; the unpruned reference runs beside the pruned one
        self.reference = model if self.device.type == "cpu" else copy.deepcopy(model).to(self.device)

    def measure(self, candidate: Candidate, level: str) -> tuple[dict[str, float], nn.Module]:
        """The candidate's measured figures at `level` and the pruned model that gave them."""
        from decomp.pruning import PruningPlan, apply_plan, make_permanent, mask_in_place, recalibrate_batchnorm

        plan = candidate.pruning or PruningPlan()
        pruned = apply_plan(self.model, plan, self.one, mode="physical", index=self.index).module.to(self.device)
        if self.data is not None and plan.prunes():
            if self.config.accuracy.bn_batches:
                recalibrate_batchnorm(pruned, self._training_inputs(self.config.accuracy.bn_batches))
            epochs = {"short": self.config.accuracy.short_epochs, "full": self.config.accuracy.finetune_epochs}
            if level in epochs:
                if plan.layers:  # N:M or unstructured sparsity must survive fine-tuning: masks while it trains
                    mask_in_place(pruned, PruningPlan(layers=plan.layers))
                self._finetune(pruned, epochs[level])
                make_permanent(pruned)
        out = self._figures(pruned, self.selection, "")
        if self.report:
            out.update(self._figures(pruned, self.report, "test_"))
        return out, pruned

    def _figures(self, pruned: nn.Module, batches: list[Batch], prefix: str) -> dict[str, float]:
        from decomp.pruning import evaluate

        out = {}
        if "accuracy" in self.measured:
            out[prefix + "accuracy"] = evaluate(pruned, self._on_device(batches))
        if "agreement" in self.measured:
            out[prefix + "agreement"] = _agreement(self.reference, pruned, self._on_device(batches))
        return out

    def _batches(self, dataset) -> list[Batch]:
        accuracy = self.config.accuracy
        if accuracy.max_samples is not None and accuracy.max_samples < len(dataset):
            dataset = torch.utils.data.Subset(dataset, range(accuracy.max_samples))
        loader = torch.utils.data.DataLoader(dataset, batch_size=accuracy.batch_size, shuffle=False)
        return [((x,), y) for x, y in loader]

    def _on_device(self, batches: list[Batch]) -> Iterator[tuple[Any, torch.Tensor | None]]:
        for inputs, labels in batches:
            moved = tuple(x.to(self.device) for x in inputs)
            yield (moved[0] if len(moved) == 1 else moved), (labels.to(self.device) if labels is not None else None)

    def _training(self, steps: int, augment: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """`steps` training batches, the loader cycled, in an order seeded by the job's searcher seed; with
        `augment`, augmented as the job's `train:` section augments."""
        from decomp.data import Augmented

        loader, _ = self.data.loaders(self.config.accuracy.batch_size, seed=self.seed)
        recipe = self.config.train
        if augment and recipe is not None and (recipe.shift or recipe.rotate or recipe.scale):
            loader = Augmented(loader, recipe.shift, recipe.rotate, recipe.scale, seed=self.seed)
        batches = itertools.islice(itertools.chain.from_iterable(itertools.repeat(loader)), steps)
        return ((x.to(self.device), y.to(self.device)) for x, y in batches)

    def _training_inputs(self, steps: int) -> Iterator[torch.Tensor]:
        return (x for x, _ in self._training(steps))

    def _finetune(self, model: nn.Module, epochs: float) -> None:
        """`epochs` (fractions allowed) of training, seeded by the job's searcher seed, with the base's recipe
        where the job trains its base."""
        from decomp.pruning import TrainConfig, train

        steps = max(1, math.ceil(epochs * math.ceil(len(self.data.train) / self.config.accuracy.batch_size)))
        recipe = self.config.train
        settings = (
            {}
            if recipe is None
            else {"optimizer": recipe.optimizer, "momentum": recipe.momentum, "l2": recipe.weight_decay / 2}
        )
        config = TrainConfig(epochs=1, lr=self.config.accuracy.lr, seed=self.seed, **settings)
        train(model, self._training(steps, augment=True), config)


def module_bytes(module: nn.Module) -> bytes:
    """The module's weights as safetensors bytes (tied parameters stored once, as `safetensors` wants)."""
    from safetensors.torch import save_model

    fd, path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        save_model(module.cpu(), path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def _random_like(x: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    shape = (count, *x.shape[1:])
    if x.dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(x.dtype)
    if x.dtype == torch.bool:
        return torch.ones(shape, dtype=x.dtype)
    high = int(x.max()) + 1 if x.numel() else 2  # token ids: stay inside what the example uses
    return torch.randint(0, max(high, 2), shape, generator=gen, dtype=x.dtype)


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict) or hasattr(value, "values"):
        value = list(value.values())
    for item in value:
        if isinstance(item, torch.Tensor):
            return item
    raise DecompError(f"the model returned {type(value).__name__} with no tensor; agreement needs a tensor output")


@torch.no_grad()
def _agreement(reference: nn.Module, pruned: nn.Module, batches) -> float:
    """Share of predictions (argmax over the last dimension, every position) both models make alike."""
    reference.eval()
    pruned.eval()
    same = seen = 0
    for inputs, _ in batches:
        args = inputs if isinstance(inputs, tuple) else (inputs,)
        a, b = _first_tensor(reference(*args)), _first_tensor(pruned(*args))
        same += int((a.argmax(-1) == b.argmax(-1)).sum())
        seen += a.argmax(-1).numel()
    return same / seen if seen else 0.0


def check_measurable(config: JobConfig, measured: Sequence[str]) -> None:
    """Errors for measuring a job cannot do, raised where the job is read (not in every evaluator)."""
    if "accuracy" in measured and not config.data:
        raise SpecError(
            "objective or constraint 'accuracy' needs labelled data: give `data` (e.g. mnist, digits or "
            "python:pkg.module:factory), or use 'agreement' (agreement with the unpruned model)"
        )
    if measured and not config.data and config.accuracy.levels() != ("bn",):
        raise SpecError(
            "accuracy.finetune_epochs / short_epochs fine-tune on data, and the job has none: give `data`, or set "
            "them to 0 to measure agreement on random inputs without fine-tuning"
        )

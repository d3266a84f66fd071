"""`decomp eval`: an export's accuracy on real data, computed by running its parts (in this process or one Ray
actor per part), beside the figure the search reported for it.

The data spec names the data set and its split exactly as a job file does, so the test split is the one the
search reported on (its validation split is carved from the training data and never overlaps it). An export
made by `decomp export` records how its run measured accuracy (data spec, validation share, seed, samples at
most): those are the defaults, so the export is scored on exactly the samples the search scored it on. An
early-exit export (`decomp exits`) runs in an `ExitRunner` with its recorded threshold, and is compared with
the accuracy `decomp exits` measured with the exit. Exports
traced for one batch size only (`torch.export`: Hugging Face models) get batches of that size, the last one
padded with copies of its first sample and the padding ignored.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from cluster.runners import LocalRunner, RayRunner, export_loaders
from decomp.errors import SpecError
from decomp.partition.manifest import Manifest, manifest_layout, read_manifest

__all__ = ["ExportScore", "score_export"]

SPLITS = ("test", "validation", "train")


@dataclass(frozen=True)
class ExportScore:
    """What `decomp eval` reports: the export's accuracy on `samples` samples of `split`, and what the search
    recorded for the candidate (None for exports not made from a search run, or for other splits)."""

    export: str
    data: str
    split: str
    samples: int
    accuracy: float
    recorded: float | None  # the search's figure for this split (test: `test_accuracy`)
    level: str | None  # the fidelity level the recorded figure was measured at
    runner: str
    recorded_by: str = "the search"  # or `decomp exits` for an early-exit export

    @property
    def difference(self) -> float | None:
        """accuracy - recorded, in points of [0, 1]."""
        return None if self.recorded is None else self.accuracy - self.recorded

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"difference": self.difference}


def score_export(
    folder: str | os.PathLike[str],
    data: str | None = None,
    split: str = "test",
    local: bool = True,
    batch_size: int = 128,
    threads: int = 1,
    validation: float | None = None,
    seed: int | None = None,
    max_samples: int | None = None,
) -> ExportScore:
    """Run the export in `folder` on `split` of `data` and return its top-1 accuracy. `data`, `validation`,
    `seed` (which carve the validation split) and `max_samples` (the first samples of the split) default to
    what the search that made the export measured with; the search's figure is reported for its own data only."""
    from decomp.data import load_data

    if split not in SPLITS:
        raise SpecError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    manifest = read_manifest(folder)
    if len(manifest.inputs) != 1:
        raise SpecError(
            f"decomp eval feeds one input of labelled data, and this export takes {len(manifest.inputs)} "
            f"({', '.join(i.name for i in manifest.inputs)}); evaluate it from Python with decomp.load_export"
        )
    search = (manifest.expected_costs or {}).get("search", {})
    exit_info = (manifest.expected_costs or {}).get("exit")  # an early-exit export (`decomp exits`)
    job = (exit_info or search).get("measured_on") or {}
    if data is None and not job.get("data"):
        raise SpecError(
            f"{folder} records no data its accuracy was measured on (an export of a run without data, or made by "
            "decomp split); give the data spec: --data mnist?train=4000&test=1000"
        )
    own = data is None or data == job.get("data")
    data = data or job["data"]
    validation = validation if validation is not None else job.get("validation", 0.1)
    seed = seed if seed is not None else job.get("seed", 0)
    max_samples = max_samples if max_samples is not None else job.get("max_samples") if own else None
    splits = load_data(data).with_validation(validation, seed=seed)
    dataset = {"test": splits.test, "validation": splits.validation, "train": splits.train}[split]
    if max_samples is not None and max_samples < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(max_samples))  # the first ones, as the search took them
    fixed = _fixed_batch(manifest)
    size = fixed or batch_size
    layout, loaders = manifest_layout(manifest), export_loaders(folder)
    if exit_info is not None:  # answered where the runtime answers: at the exit when it is confident
        from cluster.exit_runner import ExitRunner

        runner = ExitRunner(layout, loaders, float(exit_info["threshold"]), threads=threads, local=local)
    elif local:
        runner = LocalRunner(layout, loaders, threads)
    else:
        runner = RayRunner(layout, loaders, threads=threads)
    correct = seen = 0
    try:
        loader = torch.utils.data.DataLoader(dataset, batch_size=size, shuffle=False)
        labels: list[torch.Tensor] = []
        for outputs in runner.map(_batches(loader, fixed, labels)):
            logits = outputs[0] if isinstance(outputs, tuple) else outputs
            target = labels.pop(0)
            predicted = logits[: len(target)].argmax(-1)
            correct += int((predicted == target).sum())
            seen += len(target)
    finally:
        runner.close()
    metrics = search.get("metrics", {})
    recorded = {"test": metrics.get("test_accuracy"), "validation": search.get("values", {}).get("accuracy")}
    if exit_info is not None:
        recorded = {s: exit_info[s]["accuracy"] for s in ("test", "validation")}
    figure = recorded.get(split) if own else None
    return ExportScore(
        str(folder),
        data,
        split,
        seen,
        correct / seen if seen else 0.0,
        None if figure is None else float(figure),
        search.get("level"),
        "local" if local else "ray",
        "decomp exits" if exit_info is not None else "the search",
    )


def _fixed_batch(manifest: Manifest) -> int | None:
    """The one batch size the export takes, where its graph fixes it."""
    info = manifest.inputs[0]
    return int(info.shape[0]) if info.batch_dim != 0 and info.shape else None


def _batches(loader, fixed: int | None, labels: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """The inputs of each batch (padded to `fixed` samples where the export needs that), their labels queued
    in `labels` for the caller to match with the outputs in order."""
    for x, y in loader:
        labels.append(y)
        if fixed is not None and len(x) < fixed:
            x = torch.cat([x, x[:1].expand(fixed - len(x), *x.shape[1:])])
        yield [x]

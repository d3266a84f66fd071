"""A search job's base model: the weights every candidate is pruned from, made ready before the search.

Where the job has data, the data is checked against the model first (`decomp.training.check_fit`: the model
takes the inputs, and every label is one of its classes). Where the job has a `train:` section, the base is
trained once per run into the run folder (`runs/NAME/base/`, a `decomp train` folder, written atomically by
`decomp.training.run_train`) and reused while the job asks for the same training (on resume, or when a fresh
start failed after training). Where the job claims `base_accuracy`, the base's test accuracy is checked
against it, and a base below it stops the run before the search with the measured figure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cluster.config import JobConfig
from cluster.runs import BASE
from decomp.errors import SpecError

__all__ = ["prepare_base"]


def prepare_base(config: JobConfig, folder: Path, note: Callable[[str], None] | None = None) -> Path | None:
    """Check, train (or reuse) and test the run's base model (see the module docstring); the weights the
    evaluators load, or None where the job's own model and weights are the base. `note` hears each step."""
    say = note or (lambda text: None)
    if not config.data:
        return None
    with config.importing():
        request = config.base_request()
        if request is None:
            weights, accuracy = None, _check_job_model(config, say)
        else:
            weights, accuracy = _trained(request, Path(folder), say)
    _check_claim(config, accuracy)
    return weights


def _check_job_model(config: JobConfig, say: Callable[[str], None]) -> float | None:
    """Check the job's data against its model (with the job's weights); its test accuracy where claimed."""
    from cluster.task import load_job_model
    from decomp.data import load_data
    from decomp.pruning import evaluate
    from decomp.training import check_fit

    say(f"checking {config.data} against {config.model} ...")
    data = load_data(config.data)
    module = load_job_model(config).module
    check_fit(module, data, config.model, config.data)
    if config.base_accuracy is None:
        return None
    say(f"testing {config.model} on {config.data} ...")
    return evaluate(module, data.loaders(config.accuracy.batch_size)[1])


def _trained(request, folder: Path, say: Callable[[str], None]) -> tuple[Path, float]:
    """The base's weights and test accuracy: trained now into `folder/base`, or before with the same request. A
    failed training leaves the folder as it was (and removes it, empty, where this made it)."""
    from decomp.training import WEIGHTS, read_trained, run_train

    out = folder / BASE
    try:
        cached = read_trained(out)
    except SpecError:
        cached = None
    if cached is not None and cached.request == request and (out / WEIGHTS).is_file():
        say(f"base model trained before: {cached.test_accuracy:.2%} test accuracy ({out})")
        return out / WEIGHTS, cached.test_accuracy
    made = not folder.exists()
    say(f"training the base model ({request.epochs} epochs) ...")
    try:
        summary = run_train(request, out, note=lambda text: say(f"training the base model: {text} ..."))
    except BaseException:
        if made and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        raise
    say(f"trained the base model: {summary.test_accuracy:.2%} test accuracy in {summary.seconds:.0f} s")
    return out / WEIGHTS, summary.test_accuracy


def _check_claim(config: JobConfig, accuracy: float | None) -> None:
    claim = config.base_accuracy
    if claim is None or accuracy is None or accuracy >= claim:
        return
    if config.train is not None:
        fix = "train it longer or otherwise (the train: section), or lower base_accuracy"
    elif config.weights:
        fix = f"check that {config.weights} holds this model's weights trained on this data, or train it (train:)"
    else:
        fix = "the job loads no trained weights: give `weights` (e.g. from decomp train) or a `train:` section"
    raise SpecError(
        f"the base model {config.model} scores {accuracy:.2%} test accuracy on {config.data}, below the job's "
        f"base_accuracy of {claim:.2%}; {fix}"
    )

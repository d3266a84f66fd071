"""Training a model once on a data set (`decomp train`, a search job's `train:` section): the weights and a
summary, written to a folder atomically.

`run_train(request, out)` loads the model (from the weights it starts from, if any) and the data, checks that
they fit each other (`check_fit`: the model takes the inputs and returns one logit per class, and every label
is one of those classes), trains with `decomp.pruning.train` (images randomly moved, turned and resized where
the request asks), measures the test accuracy (and the validation accuracy where a share of the training data
is held out), and writes `weights.safetensors` and `summary.json` (`TrainSummary`) through
`decomp.files.staged_folder`: a failure leaves `out` as it was. `read_trained(folder)` reads the summary back.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model
from torch import nn
from torch.utils.data import DataLoader

from decomp.data import Augmented, DataSplits, labels_of, load_data
from decomp.errors import DecompError, SpecError
from decomp.files import staged_folder
from decomp.pruning.train import Callback, TrainConfig, evaluate, train
from decomp.specs import load_model

__all__ = ["SUMMARY", "WEIGHTS", "TrainRequest", "TrainSummary", "check_fit", "read_trained", "run_train"]

WEIGHTS, SUMMARY = "weights.safetensors", "summary.json"


@dataclass(frozen=True)
class TrainRequest:
    """What to train and how. `schedule`: `cosine` anneals the learning rate from `lr` towards 0 over the
    epochs, `constant` keeps it. `weight_decay` adds weight_decay x w to the gradient of conv and linear weights
    (an L2 penalty; biases and norms are not decayed); `shift` (pixels), `rotate` (degrees) and `scale` (a share)
    move, turn and resize each training image at random by up to that much (`decomp.data.Augmented`; all 0:
    no augmentation); `validation` holds that share of the training data out (chosen by `validation_seed`, as
    `DataSplits.with_validation` chooses it), neither trained on nor tested, only reported."""

    model: str
    data: str
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adam"
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 0.0
    shift: float = 0.0
    rotate: float = 0.0
    scale: float = 0.0
    seed: int = 0
    weights: str | None = None
    validation: float = 0.0
    validation_seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("epochs", self.epochs, isinstance(self.epochs, int) and self.epochs >= 1, "an integer >= 1, e.g. 10"),
            ("lr", self.lr, self.lr > 0, "> 0, e.g. 1e-3"),
            ("batch_size", self.batch_size, self.batch_size >= 1, "an integer >= 1, e.g. 64"),
            ("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1), e.g. 0.9"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0, e.g. 5e-4"),
            ("shift", self.shift, self.shift >= 0, "a pixel count >= 0, e.g. 2"),
            ("rotate", self.rotate, self.rotate >= 0, "an angle >= 0 in degrees, e.g. 12"),
            ("scale", self.scale, 0 <= self.scale < 1, "a share in [0, 1), e.g. 0.1"),
            ("validation", self.validation, 0 <= self.validation < 1, "a share in [0, 1), e.g. 0.1"),
        )
        for name, value, ok, rule in checks:
            if not ok:
                raise SpecError(f"training {name} must be {rule}; got {value!r}")
        self.config()  # the optimizer's name

    def augments(self) -> bool:
        return bool(self.shift or self.rotate or self.scale)

    def config(self) -> TrainConfig:
        """The `decomp.pruning.train` settings of this request."""
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            optimizer=self.optimizer,
            schedule=self.schedule,
            momentum=self.momentum,
            l2=self.weight_decay / 2,  # d/dw of (wd / 2) w^2 is wd x w
            seed=self.seed,
        )


@dataclass(frozen=True)
class TrainSummary:
    """What a training job did (`summary.json`, `to_json()`): the request, the test accuracy before and after,
    the validation accuracy (None when nothing was held out), the mean training loss of each epoch, the
    training samples and classes, and the seconds it trained."""

    request: TrainRequest
    test_accuracy: float
    start_accuracy: float
    validation_accuracy: float | None
    losses: tuple[float, ...]
    train_samples: int
    classes: int
    seconds: float
    files: tuple[str, ...] = (WEIGHTS,)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"request": asdict(self.request), "losses": list(self.losses), "files": list(self.files)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainSummary:
        request, losses, files = TrainRequest(**data["request"]), tuple(data["losses"]), tuple(data["files"])
        return cls(**{**data, "request": request, "losses": losses, "files": files})


def check_fit(module: nn.Module, data: DataSplits, model: str = "the model", spec: str = "the data") -> int:
    """The model's output width, once the data can train and test it: the model takes a batch of its inputs
    and returns (batch, classes) logits, and every label is a class index below that width. Otherwise a
    `SpecError` that names the split, shows the values and says what to change."""
    inputs, _ = next(iter(DataLoader(data.train, batch_size=2)))
    shape = tuple(inputs.shape[1:])
    try:
        with torch.no_grad():
            out = module.eval()(inputs)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise SpecError(
            f"the inputs of data {spec} (one sample: shape {shape}) do not fit model {model}: {err}. Make the data "
            "factory return inputs the model takes, or use a model built for them"
        ) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(inputs):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SpecError(
            f"model {model} returns {got} for a batch of {len(inputs)} samples of {spec}; training and accuracy "
            "need (batch, classes) logits: return the classifier's output"
        )
    classes = out.shape[1]
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    for name, split in splits.items():
        if split is None:
            continue
        labels = labels_of(split)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise SpecError(
                f"the {name} labels of data {spec} are {labels.dtype}; labels are class indices (integers), "
                "e.g. y.long() for one class per sample, or y.argmax(1) for one-hot rows"
            )
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise SpecError(
                f"the {name} labels of data {spec} run from {low} to {high}, but model {model} has {classes} "
                f"outputs, so a label must be a class index in [0, {classes}). Fix the data factory's labels"
                + (f", or give the model {high + 1} outputs (e.g. ?classes={high + 1})" if low >= 0 else "")
            )
    return classes


class _Progress(Callback):
    """Says which epoch starts."""

    def __init__(self, note: Callable[[str], None], epochs: int) -> None:
        self.note, self.epochs = note, epochs

    def on_epoch_start(self, epoch: int) -> None:
        self.note(f"epoch {epoch + 1}/{self.epochs}")


def run_train(request: TrainRequest, out: str | Path, note: Callable[[str], None] | None = None) -> TrainSummary:
    """Train as `request` says and write `weights.safetensors` and `summary.json` to `out` (a folder that does
    not exist, is empty, or holds an earlier training job's, which is replaced); `note` hears each epoch."""
    out = Path(out)
    _check_out(out)
    data = load_data(request.data)
    if request.validation:
        data = data.with_validation(request.validation, seed=request.validation_seed)
    if request.augments() and len(data.input_shape) != 3:
        raise SpecError(
            f"shift, rotate and scale augment images of shape (channels, height, width); data {request.data} has "
            f"samples of shape {data.input_shape}: use image-shaped data (without flat=true), or set them to 0"
        )
    loaded = load_model(request.model, request.weights, [(1, *data.input_shape)], seed=request.seed)
    model = loaded.module
    classes = check_fit(model, data, request.model, request.data)
    batches, test = data.loaders(request.batch_size, seed=request.seed)
    if request.augments():
        batches = Augmented(batches, request.shift, request.rotate, request.scale, seed=request.seed)
    start_accuracy = evaluate(model, test)
    started = time.perf_counter()
    losses = train(model, batches, request.config(), callbacks=[_Progress(note, request.epochs)] if note else ())
    seconds = time.perf_counter() - started
    if not all(math.isfinite(loss) for loss in losses):
        raise DecompError(
            f"training gave a non-finite loss (mean per epoch: {', '.join(f'{x:.4g}' for x in losses)}); lower the "
            f"learning rate (was {request.lr:g}), or check the data {request.data} for NaN or infinite values"
        )
    validation = None
    if data.validation is not None:
        validation = evaluate(model, DataLoader(data.validation, batch_size=request.batch_size))
    summary = TrainSummary(
        request, evaluate(model, test), start_accuracy, validation, tuple(losses), len(data.train), classes, seconds
    )
    with staged_folder(out) as staging:
        save_model(model, str(staging / WEIGHTS))
        (staging / SUMMARY).write_text(json.dumps(summary.to_json(), indent=1))
    return summary


def read_trained(folder: str | Path) -> TrainSummary:
    """The summary of a training job's folder."""
    folder = Path(folder)
    try:
        return TrainSummary.from_json(json.loads((folder / SUMMARY).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SpecError(
            f"{folder} is not a decomp train folder ({err}); give the --out folder of decomp train"
        ) from None


def _check_out(out: Path) -> None:
    """Replacing `out` is safe only where it is nothing yet, or an earlier training job's folder."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    try:
        read_trained(out)
    except SpecError:
        raise SpecError(
            f"{out} exists and is not a decomp train folder; training writes a folder of its own, give another --out"
        ) from None

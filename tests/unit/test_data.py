"""Data specs: bundled MNIST and digits, synthetic data, python factories, seeded splits and their errors; labels
read from splits; augmented image batches."""

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from decomp.data import Augmented, DataSpec, DataSplits, augment_images, labels_of, load_data, parse_data_spec
from decomp.errors import SpecError


class _Pairs(Dataset):
    """A plain map-style Dataset (not a TensorDataset) for the python: form."""

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor):
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.inputs[index], self.labels[index]


def make(n: int = 30, features: int = 5, as_dataset: bool = False):
    """Factory for `python:tests.unit.test_data:make`: labels 0..2, so three classes."""
    inputs = torch.arange(n * features, dtype=torch.float32).reshape(n, features)
    labels = torch.arange(n) % 3
    train, test = (inputs[: n // 2], labels[: n // 2]), (inputs[n // 2 :], labels[n // 2 :])
    return (_Pairs(*train), _Pairs(*test)) if as_dataset else (train, test)


def make_bad():
    return torch.zeros(3)


def make_lists():
    return [1, 2], [3]


@pytest.fixture(scope="module")
def mnist() -> DataSplits:
    return load_data("mnist")


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is ~50x faster than a thread pool on a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tensors(dataset: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset.tensors[0], dataset.tensors[1]


def _row_hashes(inputs: torch.Tensor) -> set[int]:
    return {hash(row.numpy().tobytes()) for row in inputs.reshape(len(inputs), -1)}


def test_parse_forms_and_options():
    spec = parse_data_spec("mnist?train=100&flat=true&seed=3")
    assert (spec.source, dict(spec.options)) == ("mnist", {"train": 100, "flat": True, "seed": 3})
    assert str(parse_data_spec("synthetic?shape=[3, 8]&classes=4")) == "synthetic?shape=[3, 8]&classes=4"
    python = parse_data_spec("python:pkg.mod:make?anything=abc")
    assert (python.source, python.options) == ("python:pkg.mod:make", (("anything", "abc"),))


def test_mnist_images_in_unit_range(mnist):
    inputs, labels = _tensors(mnist.train)
    assert inputs.shape == (4000, 1, 28, 28) and len(mnist.test) == 1000
    assert mnist.input_shape == (1, 28, 28) and mnist.classes == 10
    assert inputs.dtype == torch.float32 and inputs.min() == 0.0 and inputs.max() == 1.0
    assert labels.dtype == torch.int64 and set(labels.tolist()) == set(range(10))  # shuffled: not only 0..7
    assert set(_tensors(mnist.test)[1].tolist()) == set(range(10))


def test_mnist_flat_matches_images(mnist):
    flat = load_data("mnist?flat=true")
    assert flat.input_shape == (784,) and _tensors(flat.train)[0].shape == (4000, 784)
    assert torch.equal(_tensors(flat.train)[0], _tensors(mnist.train)[0].reshape(4000, 784))


@pytest.mark.parametrize(("spec", "shape"), [("digits", (1, 8, 8)), ("digits?flat=true", (64,))])
def test_digits_shapes_and_default_split(spec, shape):
    data = load_data(spec)
    inputs, labels = _tensors(data.train)
    assert (len(data.train), len(data.test)) == (1437, 360)  # 80% / 20% of 1797
    assert data.input_shape == shape and inputs.shape == (1437, *shape) and data.classes == 10
    assert inputs.min() == 0.0 and inputs.max() == 1.0 and labels.max() == 9


def test_one_size_given_other_shrinks_to_fit():
    data = load_data("digits?train=1500")
    assert (len(data.train), len(data.test)) == (1500, 297)
    data = load_data("mnist?test=2000&train=100")
    assert (len(data.train), len(data.test)) == (100, 2000)


@pytest.mark.parametrize("spec", ["mnist?train=300&test=100", "digits?flat=true", "synthetic?shape=[6]&size=200"])
def test_same_seed_same_split_other_seed_other_order(spec):
    first, again, other = load_data(spec), load_data(spec + "&seed=0"), load_data(spec + "&seed=1")
    for split in ("train", "test"):
        for a, b in zip(_tensors(getattr(first, split)), _tensors(getattr(again, split)), strict=True):
            assert torch.equal(a, b)
    assert len(other.train) == len(first.train)
    assert not torch.equal(_tensors(first.train)[0], _tensors(other.train)[0])


@pytest.mark.parametrize("spec", ["mnist", "digits?seed=5", "synthetic?size=300&train=200&test=100"])
def test_train_and_test_do_not_overlap(spec):
    data = load_data(spec)
    train, test = _row_hashes(_tensors(data.train)[0]), _row_hashes(_tensors(data.test)[0])
    assert len(train) == len(data.train) and len(test) == len(data.test)  # rows are distinct
    assert not train & test


def test_synthetic_shape_and_classes():
    data = load_data("synthetic?shape=[3,32,32]&classes=10&size=512")
    assert (len(data.train), len(data.test)) == (409, 103)
    assert data.input_shape == (3, 32, 32) and data.classes == 10
    assert _tensors(data.train)[0].shape == (409, 3, 32, 32)


def test_synthetic_is_learnable_by_a_linear_model(one_thread):
    data = load_data("synthetic?shape=[16]&classes=4&size=1200&train=1000&test=200")
    (x, y), (x_test, y_test) = _tensors(data.train), _tensors(data.test)
    weights = torch.zeros(16, 4, requires_grad=True)
    for _ in range(300):  # plain gradient descent on a logistic regression
        torch.nn.functional.cross_entropy(x @ weights, y).backward()
        with torch.no_grad():
            weights -= 0.5 * weights.grad
            weights.grad = None
    accuracy = ((x_test @ weights).argmax(dim=1) == y_test).float().mean().item()
    assert accuracy > 2 * (1 / 4), accuracy


@pytest.mark.parametrize("as_dataset", [False, True])
def test_python_factory_gets_options(as_dataset):
    data = load_data(f"python:tests.unit.test_data:make?n=40&features=7&as_dataset={str(as_dataset).lower()}")
    assert isinstance(data.train, _Pairs if as_dataset else TensorDataset)
    assert (len(data.train), len(data.test)) == (20, 20)
    assert data.input_shape == (7,) and data.classes == 3
    assert torch.equal(data.test[0][0], torch.arange(140, 147, dtype=torch.float32))


def test_loaders_shuffle_train_by_seed_and_keep_test_order():
    data = load_data("python:tests.unit.test_data:make?n=64")
    first = [y for _, y in data.loaders(8, seed=0)[0]]
    again = [y for _, y in data.loaders(8, seed=0)[0]]
    other = [y for _, y in data.loaders(8, seed=1)[0]]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    test_inputs = torch.cat([x for x, _ in data.loaders(8)[1]])
    assert torch.equal(test_inputs, data.test.tensors[0])


@pytest.mark.parametrize("text", ["cifar", "MNIST", "python:pkg.mod", "python:pkg.mod:", "mnist:x"])
def test_unknown_form_lists_valid_forms(text):
    with pytest.raises(SpecError) as info:
        parse_data_spec(text)
    message = str(info.value)
    assert text in message and "synthetic" in message and "python:pkg.module:factory" in message


def test_hand_built_spec_is_checked_too():
    with pytest.raises(SpecError, match="unknown data spec 'cifar'"):
        load_data(DataSpec("cifar"))
    with pytest.raises(SpecError, match="no option 'size'"):
        load_data(DataSpec("mnist", (("size", 3),)))


@pytest.mark.parametrize(
    ("text", "valid"),
    [("mnist?batch=3", "train, test, seed, flat"), ("synthetic?flat=true", "train, test, seed, shape, classes, size")],
)
def test_unknown_option_names_key_and_lists_valid(text, valid):
    key = text.split("?")[1].split("=")[0]
    with pytest.raises(SpecError, match=f"no option '{key}'.*valid: {valid}$"):
        parse_data_spec(text)


@pytest.mark.parametrize(
    ("text", "available"),
    [
        ("mnist?train=4500&test=1000", 5000),
        ("mnist?train=5000", 5000),
        ("digits?train=1800", 1797),
        ("synthetic?size=10&train=8&test=3", 10),
    ],
)
def test_split_larger_than_data_says_how_many_exist(text, available):
    with pytest.raises(SpecError, match=f"has only {available} "):
        load_data(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("mnist?train", "key=value"),
        ("mnist?seed=1&seed=2", "'seed' given twice"),
        ("mnist?flat=1", "flat must be true or false"),
        ("digits?train=-5", "train must be an integer >= 1, got -5"),
        ("digits?seed=abc", "seed must be an integer >= 0, got 'abc'"),
        ("synthetic?shape=3", "shape must be a list of positive integers"),
        ("synthetic?classes=1", "classes must be an integer >= 2"),
    ],
)
def test_bad_option_values(text, match):
    with pytest.raises(SpecError, match=match):
        load_data(text)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("python:tests.unit.no_such_module:make", "cannot import 'make'"),
        ("python:tests.unit.test_data:no_such_factory", "cannot import 'no_such_factory'"),
        ("python:tests.unit.test_data:make?colour=red", "bad option.*colour"),
        ("python:tests.unit.test_data:make_bad", "expected a \\(train, test\\) pair"),
        ("python:tests.unit.test_data:make_lists", "returned a list split; expected a Dataset"),
    ],
)
def test_python_factory_errors(text, match):
    with pytest.raises(SpecError, match=match):
        load_data(text)


def test_a_validation_split_is_carved_from_the_training_data():
    splits = load_data("digits?seed=0")
    carved = splits.with_validation(0.2, seed=3)
    train, validation = carved.train.indices, carved.validation.indices
    assert len(validation) == round(0.2 * len(splits.train)) and len(train) + len(validation) == len(splits.train)
    assert not set(train) & set(validation) and carved.test is splits.test  # the test split is untouched
    assert splits.with_validation(0.2, seed=3).validation.indices == validation  # seeded: the same split again
    with pytest.raises(SpecError, match=r"validation share must be in \(0, 1\), got 1.5"):
        splits.with_validation(1.5)


def test_labels_of_reads_every_kind_of_split():
    splits = load_data("digits?seed=0").with_validation(0.2, seed=3)
    everything = splits.train.dataset.tensors[1]
    assert torch.equal(labels_of(splits.train), everything[splits.train.indices])
    pairs = load_data("python:tests.unit.test_data:make?n=12&as_dataset=true")
    assert labels_of(pairs.train).tolist() == [0, 1, 2, 0, 1, 2]  # one sample at a time
    assert pairs.classes == 3


def _dot(side: int = 9) -> torch.Tensor:
    image = torch.zeros(1, 1, side, side)
    image[0, 0, side // 2, side // 2] = 1.0
    return image


def test_augmented_images_move_within_the_asked_bounds(one_thread):
    gen = torch.Generator().manual_seed(0)
    dots = _dot().repeat(64, 1, 1, 1)
    moved = augment_images(dots, gen, shift=2)
    grid = torch.arange(9, dtype=torch.float32)
    mass = moved.sum(dim=(1, 2, 3))
    rows = (moved.sum(dim=3)[:, 0] * grid).sum(1) / mass - 4
    cols = (moved.sum(dim=2)[:, 0] * grid).sum(1) / mass - 4
    assert torch.allclose(mass, torch.ones(64), atol=1e-5)  # a dot inside the frame keeps its mass
    assert rows.abs().max() <= 2 + 1e-5 and cols.abs().max() <= 2 + 1e-5 and rows.abs().max() > 1
    assert torch.equal(augment_images(dots, torch.Generator().manual_seed(0)), dots)  # nothing asked: unchanged
    right = torch.zeros(64, 1, 9, 9)
    right[:, 0, 4, 7] = 1.0  # three pixels right of the centre the turns are about
    turned = augment_images(right, torch.Generator().manual_seed(1), rotate=10)
    mass = turned.sum(dim=(1, 2, 3))
    rows = (turned.sum(dim=3)[:, 0] * grid).sum(1) / mass - 4
    cols = (turned.sum(dim=2)[:, 0] * grid).sum(1) / mass - 4
    angles = torch.rad2deg(torch.atan2(rows, cols)).abs()
    assert angles.max() <= 10.5 and angles.max() > 5 and mass.min() > 0.8  # turned, and still in the frame
    with pytest.raises(SpecError, match=r"shape \(N, C, H, W\); got a batch of shape \(4, 64\)"):
        augment_images(torch.zeros(4, 64), gen, shift=1)


def test_augmented_loaders_are_seeded_and_fresh_every_pass(one_thread):
    data = load_data("digits?train=64&test=8")
    loader = data.loaders(32, seed=0)[0]
    first = Augmented(loader, shift=1, rotate=5, seed=7)
    again = Augmented(data.loaders(32, seed=0)[0], shift=1, rotate=5, seed=7)
    one, two = [x for x, _ in first], [x for x, _ in first]  # two passes
    assert all(torch.equal(a, b) for a, b in zip(one, [x for x, _ in again], strict=True))
    assert len(first) == 2 and not torch.equal(torch.cat(one), torch.cat(two))  # shuffled and moved anew
    with pytest.raises(SpecError, match="augmentation scale is a share below 1, got 1.5"):
        Augmented(loader, scale=1.5)
    with pytest.raises(SpecError, match="augmentation rotate must be >= 0, got -3"):
        Augmented(loader, rotate=-3)

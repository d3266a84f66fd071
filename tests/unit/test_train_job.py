"""`decomp train`: a training job writes weights that give the figures its summary reports, seeded, augmented
where asked; data that cannot train the model and folders it must not replace are refused, nothing written."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from decomp.data import load_data
from decomp.errors import DecompError, SpecError
from decomp.pruning import evaluate
from decomp.pruning.train import Callback, TrainConfig, train
from decomp.specs import load_model
from decomp.training import TrainRequest, TrainSummary, check_fit, read_trained, run_train

TINY = "python:tests.unit.test_train_job:tiny_cnn"
DIGITS = "digits?train=500&test=200"


def tiny_cnn(classes: int = 10):
    """A conv, a pool and a classifier on 1x8x8 images (scikit-learn's digits)."""
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, classes)
    )
    return model, torch.zeros(1, 1, 8, 8)


def labelled(low: int = 0, high: int = 10, side: int = 8, dtype=torch.int64, nan: bool = False):
    """Data factory: 64 random images, labels spread over [low, high), as (train, test) tensor pairs."""
    gen = torch.Generator().manual_seed(0)
    inputs = torch.rand(64, 1, side, side, generator=gen)
    if nan:
        inputs[3, 0, 2, 2] = float("nan")
    labels = (torch.arange(64) % (high - low) + low).to(dtype)
    return (inputs[:48], labels[:48]), (inputs[48:], labels[48:])


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train many times faster on one torch thread than on a pool on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def weights_of(folder):
    return load_model(TINY, weights=folder / "weights.safetensors").module.state_dict()


def test_a_job_writes_weights_that_give_its_summary(tmp_path):
    request = TrainRequest(TINY, DIGITS, epochs=3, lr=1e-2, validation=0.2)
    summary = run_train(request, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.json", "weights.safetensors"]
    assert read_trained(tmp_path / "out") == summary == TrainSummary.from_json(summary.to_json())
    assert summary.request == request and summary.train_samples == 400 and summary.classes == 10
    assert len(summary.losses) == 3 and summary.losses[-1] < summary.losses[0]
    assert summary.test_accuracy > 0.6 > 0.2 > summary.start_accuracy and summary.validation_accuracy > 0.5
    model = load_model(TINY, weights=tmp_path / "out" / "weights.safetensors").module
    assert evaluate(model, load_data(DIGITS).loaders(64)[1]) == summary.test_accuracy


def test_same_seed_same_weights_and_training_goes_on_from_weights(tmp_path):
    request = TrainRequest(TINY, DIGITS, epochs=1, lr=1e-2)
    first, again = run_train(request, tmp_path / "a"), run_train(request, tmp_path / "b")
    other = run_train(TrainRequest(TINY, DIGITS, epochs=1, lr=1e-2, seed=1), tmp_path / "c")
    a, b, c = (weights_of(tmp_path / name) for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a) and first.test_accuracy == again.test_accuracy
    assert not torch.equal(a["0.weight"], c["0.weight"]) and other.request.seed == 1
    on = run_train(
        TrainRequest(TINY, DIGITS, epochs=1, lr=1e-2, weights=str(tmp_path / "a" / "weights.safetensors")),
        tmp_path / "d",
    )
    assert on.start_accuracy == first.test_accuracy  # it starts from the weights it was given


def test_augmentation_is_seeded_and_changes_what_is_learnt(tmp_path):
    plain = TrainRequest(TINY, DIGITS, epochs=1, lr=1e-2)
    moved = TrainRequest(TINY, DIGITS, epochs=1, lr=1e-2, shift=1, rotate=10, scale=0.1)
    run_train(plain, tmp_path / "plain")
    run_train(moved, tmp_path / "moved")
    run_train(moved, tmp_path / "again")
    p, m, a = (weights_of(tmp_path / name) for name in ("plain", "moved", "again"))
    assert not torch.equal(p["0.weight"], m["0.weight"]) and all(torch.equal(m[k], a[k]) for k in m)
    flat = TrainRequest("python:tests.tiny_models:tiny_net", "digits?flat=true", epochs=1, shift=1)
    with pytest.raises(SpecError, match=r"shape \(64,\): use image-shaped data \(without flat=true\), or set them"):
        run_train(flat, tmp_path / "flat")
    assert not (tmp_path / "flat").exists()


@pytest.mark.parametrize(
    "data, message",
    [
        ("labelled?side=28", r"inputs of data .* \(one sample: shape \(1, 28, 28\)\) do not fit model .*tiny_cnn"),
        ("labelled?high=12", r"train labels .* run from 0 to 11, but model .* has 10 outputs.*\?classes=12"),
        ("labelled?low=-1&high=9", r"train labels .* run from -1 to 8, .* class index in \[0, 10\)"),
        ("float_labels", "labels of data .* are torch.float32; labels are class indices"),
    ],
)
def test_data_that_cannot_train_the_model_is_named_and_nothing_written(tmp_path, data, message):
    with pytest.raises(SpecError, match=message):
        run_train(TrainRequest(TINY, f"python:tests.unit.test_train_job:{data}", epochs=1), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def float_labels():
    return labelled(dtype=torch.float32)


def nan_inputs():
    return labelled(nan=True)


def test_a_loss_that_is_not_finite_writes_nothing(tmp_path):
    with pytest.raises(DecompError, match=r"non-finite loss .* lower the learning rate \(was 0.001\), or check"):
        run_train(TrainRequest(TINY, "python:tests.unit.test_train_job:nan_inputs", epochs=1), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_check_fit_wants_one_logit_per_class():
    data = load_data("python:tests.unit.test_train_job:labelled")
    assert check_fit(tiny_cnn()[0], data) == 10
    with pytest.raises(SpecError, match=r"returns \(2, 10, 1\) for a batch of 2 samples .* \(batch, classes\) logits"):
        check_fit(nn.Sequential(tiny_cnn()[0], nn.Unflatten(1, (10, 1))), data)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epochs": 0}, r"training epochs must be an integer >= 1, e.g. 10; got 0"),
        ({"lr": -1.0}, r"training lr must be > 0, e.g. 1e-3; got -1.0"),
        ({"scale": 1.5}, r"training scale must be a share in \[0, 1\)"),
        ({"validation": 1.0}, r"training validation must be a share in \[0, 1\)"),
        ({"optimizer": "lbfgs"}, "unknown optimizer 'lbfgs'; choose one of adam, sgd"),
    ],
)
def test_bad_requests_are_named(change, message):
    with pytest.raises(DecompError, match=message):
        TrainRequest(TINY, DIGITS, **change)


def test_an_out_folder_that_is_not_a_training_job_is_left_alone(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(SpecError, match="exists and is not a decomp train folder; .* give another --out"):
        run_train(TrainRequest(TINY, DIGITS, epochs=1), tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]
    first = run_train(TrainRequest(TINY, DIGITS, epochs=1), tmp_path / "out")
    second = run_train(TrainRequest(TINY, DIGITS, epochs=2), tmp_path / "out")  # an earlier job's folder: replaced
    assert read_trained(tmp_path / "out") == second != first
    with pytest.raises(SpecError, match="is not a decomp train folder"):
        read_trained(tmp_path / "mine")


def test_cli_trains_and_reports(tmp_path):
    from cluster.cli import app

    result = CliRunner().invoke(
        app,
        ["train", TINY, "--data", DIGITS, "--epochs", "2", "--lr", "0.01", "--shift", "1", "--validation", "0.1"]
        + ["--out", str(tmp_path / "out"), "--json", str(tmp_path / "s.json")],
    )
    assert result.exit_code == 0, result.output
    summary = read_trained(tmp_path / "out")
    assert f"{summary.test_accuracy:.2%}" in result.output and "validation accuracy" in result.output
    assert json.loads((tmp_path / "s.json").read_text()) == summary.to_json()
    assert summary.request.shift == 1 and summary.request.validation == 0.1 and len(summary.losses) == 2


class _LastEpoch(Callback):
    """Keeps the weights as the last epoch starts."""

    def __init__(self, model: nn.Module, epochs: int) -> None:
        self.model, self.epochs, self.before = model, epochs, None

    def on_epoch_start(self, epoch: int) -> None:
        if epoch == self.epochs - 1:
            self.before = self.model[0].weight.detach().clone()


def test_a_cosine_schedule_takes_smaller_steps_as_it_ends():
    data = load_data(DIGITS)
    moved = {}
    for schedule in ("constant", "cosine"):
        torch.manual_seed(0)
        model = tiny_cnn()[0]
        last = _LastEpoch(model, 3)
        train(model, data.loaders(64, seed=0)[0], TrainConfig(epochs=3, lr=1e-2, schedule=schedule), callbacks=[last])
        moved[schedule] = float((model[0].weight.detach() - last.before).norm())
    assert moved["cosine"] < 0.5 * moved["constant"]  # the last of 3 epochs runs at a quarter of the rate
    with pytest.raises(DecompError, match="unknown learning-rate schedule 'step'; choose constant or cosine"):
        TrainConfig(schedule="step")

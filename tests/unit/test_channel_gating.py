"""Channel gating (runtime dynamic pruning): per-input gates whose closed channels are neither computed nor read;
the sliced form equals the mask form, MACs are counted on what ran, exports predict what the model does."""

import pytest
import torch
from torch import nn

from decomp import InvalidPlanError
from decomp.pruning.channel_gating import GatedModel, gating_report, train_gates
from decomp.pruning.train import TrainConfig
from tests.tiny_models import brightness_batches


def net() -> nn.Module:
    """conv-BN-ReLU-maxpool into conv-ReLU into conv (two gateable sites; the second's producer is the
    first's consumer), then a head."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(12, 6, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).eval()


def data(n: int = 64, seed: int = 0):
    return brightness_batches(n, seed, shape=(2, 8, 8), noise=0.5)


def randomise(model: nn.Module) -> nn.Module:
    """BatchNorm statistics and gate weights off their defaults, so every channel's path matters."""
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
        if isinstance(m, nn.Linear):
            m.weight.data.normal_(0, 1)
    return model


@pytest.mark.parametrize("keep", [1.0, 0.5, 0.2])
def test_the_sliced_form_computes_what_the_mask_form_does(keep):
    x = data()[0][0]
    gated = randomise(GatedModel(net(), (x[:2],), keep)).eval()
    assert gated.layers == ("0", "4")
    with torch.no_grad():
        masked = gated(x)
        gates = [g(t) for g, t in zip(gated.gates(), [x, None], strict=True) if t is not None]
    assert ((gates[0] != 0).sum(1) <= max(1, round(keep * 8))).all()
    torch.testing.assert_close(gated.sliced(x), masked, rtol=1e-5, atol=1e-5)
    if keep < 1.0:  # the gates change what the model computes: closed channels are really gone
        with torch.no_grad():
            dense = net()(x)
        assert not torch.allclose(masked, dense, atol=1e-3)


def test_macs_are_counted_on_the_kept_channels_only():
    x = data()[0][0]
    gated = GatedModel(net(), (x[:2],), 0.5, ["0"]).eval()
    report = gating_report(gated, [(x[:4], torch.zeros(4, dtype=torch.long))])
    # conv 0 with 4 of 8 filters on 8x8, conv 4 reading 4 of 8 channels on 4x4, conv 6, the gate and the head
    kept = 4 * 2 * 9 * 64 + 12 * 4 * 9 * 16 + 6 * 12 * 16 + 2 * 8 + 6 * 3
    dense = 8 * 2 * 9 * 64 + 12 * 8 * 9 * 16 + 6 * 12 * 16 + 6 * 3
    assert report.macs == kept and report.dense_macs == dense
    assert report.channels["0"][0] == 4 and report.channels["0"][2] == 8 and report.same_as_mask == 1.0
    sent, full = report.bytes["0"]
    assert full == 8 * 4 * 4 * 4 and sent == full / 2  # after the pool: 8 channels of 4x4 floats, half of them


def test_sites_that_cannot_be_gated_are_refused_with_the_reason():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 2, 1)
            self.g = nn.Conv2d(4, 4, 3, padding=1, groups=2)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.c(self.g(self.b(y) + y))

    x = torch.randn(2, 2, 8, 8)
    with pytest.raises(InvalidPlanError, match=r"a: its output .* feeds .*not one ungrouped Conv2d"):
        GatedModel(Residual(), (x,), 0.5, ["a"])
    with pytest.raises(InvalidPlanError, match="g: grouped"):
        GatedModel(Residual(), (x,), 0.5, ["g"])
    with pytest.raises(InvalidPlanError, match="no Conv2d of that name"):
        GatedModel(Residual(), (x,), 0.5, ["nope"])
    with pytest.raises(InvalidPlanError, match="keep must be in"):
        GatedModel(net(), (x,), 0.0)


def test_gates_learn_which_channels_to_open():
    batches = data()
    gated = GatedModel(net(), (batches[0][0][:2],), 0.5)
    before = [g.fc.weight.detach().clone() for g in gated.gates()]
    losses = train_gates(gated, batches * 4, TrainConfig(epochs=6, lr=1e-2), penalty=1e-3)
    assert losses[-1] < losses[0]
    assert all(not torch.equal(b, g.fc.weight) for b, g in zip(before, gated.gates(), strict=True))
    assert all(g.saliency is None for g in gated.gates())  # nothing of training kept on the modules
    x = batches[0][0]
    torch.testing.assert_close(gated.eval().sliced(x), gated(x), rtol=1e-5, atol=1e-5)
    # trained by hand (no train_gates): eval() lets go of the last batch's saliencies, so the report can copy it
    from decomp.pruning.train import train

    gated.train()
    gated(x)
    assert gated.gates()[0].saliency is not None
    train(gated, batches, TrainConfig(epochs=1, lr=1e-3))  # ends in eval mode
    assert all(g.saliency is None for g in gated.gates())
    assert gating_report(gated, batches[:1]).same_as_mask == 1.0


def test_an_exported_gated_model_predicts_what_the_model_does(tmp_path):
    from decomp.build import build_graph
    from decomp.partition import export_split, load_export, split_model
    from decomp.partition.baselines import optimal_pipeline

    x = data()[0][0]
    gated = randomise(GatedModel(net(), (x[:4],), 0.5)).eval()
    plan = optimal_pipeline(build_graph(gated, (x[:4],)), 2)
    export_split(split_model(gated, (x[:4],), plan), tmp_path / "gated")
    with torch.no_grad():
        (exported,) = load_export(tmp_path / "gated")(x[:4])
        expected = gated(x[:4])
    torch.testing.assert_close(exported, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(exported.argmax(-1), gated.sliced(x[:4]).argmax(-1))

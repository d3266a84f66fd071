"""Tiny inline models, one per coupling case structured pruning must handle.

`CASES`: the cases `tests/unit/test_pruning.py` walks through one by one. `TOPOLOGIES`: the conformance
suite of issue 23 (`tests/unit/test_pruning_conformance.py`), each pruned exactly or refused by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    """Two convs whose outputs are added: their output channels are one group."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn_a(self.a(x)) + self.b(x)))


class Concat(nn.Module):
    """Concat on channels: each branch is its own group, mapped to its slice of the next conv's inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Conv2d(3, 6, 1)
        self.right = nn.Conv2d(3, 10, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([self.left(x), self.right(x)], dim=1))


class Split(nn.Module):
    """A conv's output split in two halves: one passes through, the other through a conv; then concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        a, b = torch.split(y, y.shape[1] // 2, dim=1)
        return self.head(torch.cat([a, self.branch(b)], dim=1))


class Depthwise(nn.Module):
    """A depthwise conv couples its input and output channels; a grouped conv follows."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.grouped(self.dw(self.expand(x))))


class FlattenLinear(nn.Module):
    """Conv channels flattened into a linear layer's inputs (each channel owns H*W inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.hidden = nn.Linear(6 * 4 * 4, 12)
        self.out = nn.Linear(12, 5)

    def forward(self, x):
        return self.out(torch.relu(self.hidden(torch.flatten(self.conv(x), 1))))


class LayerNormMLP(nn.Module):
    """Linear -> LayerNorm -> Linear on token features."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.down = nn.Linear(16, 8)

    def forward(self, x):
        return self.down(torch.relu(self.norm(self.up(x))))


CASES = {
    "residual": (Residual, (2, 3, 8, 8)),
    "concat": (Concat, (2, 3, 8, 8)),
    "split": (Split, (2, 3, 8, 8)),
    "depthwise": (Depthwise, (2, 3, 8, 8)),
    "flatten_linear": (FlattenLinear, (2, 3, 4, 4)),
    "layernorm": (LayerNormMLP, (2, 5, 8)),
}


# --- conformance topologies (issue 23): concat, split, chunk, unbind/stack, reshapes, several outputs,
# shared modules, grouped convs, norms, attention, recurrent layers, loose parameters, reorderings


class ConcatLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.left, self.right, self.head = nn.Linear(8, 6), nn.Linear(8, 10), nn.Linear(16, 4)

    def forward(self, x):
        return self.head(torch.relu(torch.cat([self.left(x), self.right(x)], -1)))


class ConcatSpatial(nn.Module):
    """Concat along height: both convs' channels are one group."""

    def __init__(self) -> None:
        super().__init__()
        self.top, self.bottom, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(torch.cat([self.top(x), self.bottom(x)], 2)))


class SplitConcatResidual(Split):
    def forward(self, x):
        y = self.conv(x)
        a, b = torch.split(y, 4, dim=1)
        return self.head(torch.cat([a, self.branch(b)], 1) + y)


class ChunkGate(nn.Module):
    """One conv's output halves gate each other: channel i of each half is one unit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 16, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        a, b = self.conv(x).chunk(2, dim=1)
        return self.head(a * torch.sigmoid(b))


class UnbindStack(nn.Module):
    """A Linear's features viewed as (3, 4), unbound and stacked back (reversed with `reverse`)."""

    reverse = False

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.head = nn.Linear(8, 12), nn.Linear(12, 5)

    def forward(self, x):
        parts = list(self.proj(x).view(x.shape[0], 3, 4).unbind(1))
        return self.head(torch.relu(torch.stack(parts[::-1] if self.reverse else parts, 1).flatten(1)))


class UnbindStackReversed(UnbindStack):
    reverse = True


class UnbindPairsReversed(nn.Module):
    """Two projections stacked, unbound and stacked back swapped."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.head = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(16, 3)

    def forward(self, x):
        a, b = torch.stack([self.q(x), self.k(x)], 1).unbind(1)
        return self.head(torch.relu(torch.stack([b, a], 1)).flatten(1))


class UnbindChannelsReversed(nn.Module):
    """A conv's channels unbound one by one and stacked back in reverse order."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.head(torch.stack(torch.relu(self.conv(x)).unbind(1)[::-1], 1))


class UnbindRowsReversed(nn.Module):
    """Rows (not channels) unbound and stacked back reversed: the channels pass through unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.stack(torch.relu(self.conv(x)).unbind(2)[::-1], 2))


class LinearViewConv(nn.Module):
    """Linear features viewed as a (6, 4, 4) map: 16 features make one conv input channel."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.conv, self.head = nn.Linear(8, 6 * 16), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(self.fc(x).view(x.shape[0], -1, 4, 4))))


class LinearUnsqueezeConv(nn.Module):
    """Linear features as 1x1 channels of a conv: one feature, one channel."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.conv = nn.Linear(8, 6), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.conv(torch.relu(self.fc(x)).view(x.shape[0], -1, 1, 1)).flatten(1)


class LinearViewConvTranspose(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.up = nn.Linear(8, 16 * 16), nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        return self.head(torch.relu(self.up(torch.relu(self.fc(x)).view(-1, 16, 4, 4))))


class MultiInputOutput(nn.Module):
    """Two inputs; the mixed feature map is returned and also feeds the head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.mix, self.head = (
            nn.Conv2d(3, 6, 1),
            nn.Conv2d(2, 6, 1),
            nn.Conv2d(12, 8, 1),
            nn.Conv2d(8, 4, 1),
        )

    def forward(self, x, y):
        feat = self.mix(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(y))], 1))
        return feat, self.head(torch.relu(feat))


class DictOutputs(nn.Module):
    """A dict of outputs; the stem's channels join a returned feature map through a residual."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mid, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        f = torch.relu(self.stem(x))
        m = self.mid(f)
        return {"features": m, "logits": self.head(torch.relu(m) + f)}


class UsedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.shared, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.shared(torch.relu(self.shared(torch.relu(self.stem(x))))))


class SplitIntoShared(nn.Module):
    """Both halves of a chunk go through one conv (a module called twice)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.shared, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        a, b = self.stem(x).chunk(2, dim=1)
        return self.head(torch.cat([self.shared(a), self.shared(b)], 1))


class GroupedResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.grouped = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.head(self.grouped(y) + y)


class DepthwiseResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.dw = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn, self.head = nn.BatchNorm2d(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        return self.head(torch.relu(self.bn(self.dw(y))) + y)


class GroupNormConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm, self.head = nn.Conv2d(3, 12, 3, padding=1), nn.GroupNorm(4, 12), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x))))


class LayerNormPlain(LayerNormMLP):
    """A LayerNorm without weights: the channels it keeps are not visible in any of its parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(16, elementwise_affine=False)


class GroupNormPlain(GroupNormConv):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(4, 12, affine=False)


class LayerNormResidual(nn.Module):
    """A pre-norm residual stream: its width runs through every LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.norm = nn.Linear(6, 16), nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.final, self.head = nn.LayerNorm(16), nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.fc2(F.gelu(self.fc1(self.norm(h))))
        return self.head(self.final(h))


class BatchNorm1dMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(10, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class Attention(nn.Module):
    """Self-attention on a residual stream (`nn.MultiheadAttention`, 4 heads of 4)."""

    norm_first = False

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.norm = nn.LayerNorm(16) if self.norm_first else nn.Identity()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        y = self.norm(h)
        return self.head(h + self.attn(y, y, y, need_weights=False)[0])


class AttentionLayerNorm(Attention):
    norm_first = True


class EmbeddingLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.lstm, self.head = nn.Embedding(20, 8), nn.LSTM(8, 12, batch_first=True), nn.Linear(12, 3)

    def forward(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[0][:, -1])


class LinearLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj, self.lstm, self.head = nn.Linear(6, 10), nn.LSTM(10, 12, batch_first=True), nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.lstm(torch.relu(self.proj(x)))[0][:, -1])


class LinearGRU(LinearLSTM):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.GRU(10, 12, batch_first=True)


class Scale(nn.Module):
    """A custom layer with its own per-channel Parameters."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels) + 0.5)
        self.beta = nn.Parameter(torch.randn(channels) * 0.1)

    def forward(self, x):
        return x * self.gamma[:, None, None] + self.beta[:, None, None]


class CustomParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.scale, self.head = nn.Conv2d(3, 8, 3, padding=1), Scale(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.scale(self.conv(x))))


class UnusedParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.spare = nn.Parameter(torch.randn(8))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


class ConvTransposeChain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up1, self.up2 = nn.ConvTranspose2d(3, 8, 2, stride=2), nn.ConvTranspose2d(8, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.up2(torch.relu(self.up1(x)))))


class SqueezeExcite(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc1, self.fc2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.head(y * torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True))))))


class ChannelsLast(nn.Module):
    """ConvNeXt-style: conv, permute to channels-last, Linear, permute back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 12), nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.head(self.fc(torch.relu(self.conv(x)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


class Conv1dSequence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn, self.c2 = nn.Conv1d(4, 10, 3, padding=1), nn.BatchNorm1d(10), nn.Conv1d(10, 10, 3, padding=1)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        return self.head(self.c2(torch.relu(self.bn(self.c1(x)))).mean(-1))


class Reorder(nn.Module):
    """Channels reordered or mixed by a parameter-free op between two convs (`op` names which)."""

    op = "flip"

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        if self.op == "flip":
            y = y.flip(1)
        elif self.op == "roll":
            y = torch.roll(y, 1, dims=1)
        elif self.op == "shuffle":
            b, c, h, w = y.shape
            y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        elif self.op == "index":
            y = y[:, [1, 0, 3, 2, 5, 4, 7, 6]]
        elif self.op == "softmax":
            y = torch.softmax(y, 1)
        return self.head(y)


class ShuffleUnit(nn.Module):
    """A ShuffleNet V2 unit: half the channels pass, half go through a bottleneck, then the halves are
    concatenated and shuffled (a view to (batch, 2, channels / 2, ...), a transpose, a view back)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b, self.head = (
            nn.Conv2d(3, 8, 1),
            nn.Conv2d(4, 6, 1),
            nn.Conv2d(6, 4, 1),
            nn.Conv2d(8, 2, 1),
        )

    def forward(self, x):
        left, right = torch.relu(self.stem(x)).chunk(2, dim=1)
        y = torch.cat([left, self.b(torch.relu(self.a(right)))], 1)
        b, c, h, w = y.shape
        return self.head(y.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w))


def _reorder(op: str) -> type[Reorder]:
    return type(f"Reorder{op.title()}", (Reorder,), {"op": op})


class ChannelMean(nn.Module):
    """Channels averaged into one (a parameter-free reduction over the pruned dimension)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 8, 1), nn.Conv2d(1, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).mean(1, keepdim=True))


IMAGE, TOKENS = (2, 3, 4, 4), "tokens"
TOPOLOGIES = {  # name -> (model class, input shapes; "tokens" for token ids in [0, 20) of shape (2, 5))
    "concat_channels": (Concat, [IMAGE]),
    "concat_last_dim": (ConcatLast, [(2, 5, 8)]),
    "concat_spatial": (ConcatSpatial, [IMAGE]),
    "split_concat": (Split, [IMAGE]),
    "split_concat_residual": (SplitConcatResidual, [IMAGE]),
    "chunk_gate": (ChunkGate, [IMAGE]),
    "unbind_stack": (UnbindStack, [(2, 8)]),
    "unbind_stack_reversed": (UnbindStackReversed, [(2, 8)]),
    "unbind_pairs_reversed": (UnbindPairsReversed, [(2, 6)]),
    "unbind_channels_reversed": (UnbindChannelsReversed, [IMAGE]),
    "unbind_rows_reversed": (UnbindRowsReversed, [IMAGE]),
    "conv_flatten_linear": (FlattenLinear, [IMAGE]),
    "linear_view_conv": (LinearViewConv, [(2, 8)]),
    "linear_unsqueeze_conv": (LinearUnsqueezeConv, [(2, 8)]),
    "linear_view_convtranspose": (LinearViewConvTranspose, [(2, 8)]),
    "multi_input_output": (MultiInputOutput, [IMAGE, (2, 2, 4, 4)]),
    "dict_outputs": (DictOutputs, [IMAGE]),
    "used_twice": (UsedTwice, [IMAGE]),
    "split_into_shared": (SplitIntoShared, [IMAGE]),
    "grouped_residual": (GroupedResidual, [IMAGE]),
    "depthwise_residual": (DepthwiseResidual, [IMAGE]),
    "groupnorm": (GroupNormConv, [IMAGE]),
    "groupnorm_no_affine": (GroupNormPlain, [IMAGE]),
    "layernorm": (LayerNormMLP, [(2, 5, 8)]),
    "layernorm_no_affine": (LayerNormPlain, [(2, 5, 8)]),
    "layernorm_residual": (LayerNormResidual, [(2, 5, 6)]),
    "batchnorm1d": (BatchNorm1dMLP, [(4, 10)]),
    "attention": (Attention, [(2, 5, 6)]),
    "attention_layernorm": (AttentionLayerNorm, [(2, 5, 6)]),
    "embedding_lstm": (EmbeddingLSTM, [TOKENS]),
    "linear_lstm": (LinearLSTM, [(2, 5, 6)]),
    "linear_gru": (LinearGRU, [(2, 5, 6)]),
    "custom_parameter": (CustomParameter, [IMAGE]),
    "unused_parameter": (UnusedParameter, [IMAGE]),
    "convtranspose_chain": (ConvTransposeChain, [IMAGE]),
    "squeeze_excite": (SqueezeExcite, [IMAGE]),
    "channels_last": (ChannelsLast, [IMAGE]),
    "conv1d_sequence": (Conv1dSequence, [(2, 4, 7)]),
    "channel_flip": (_reorder("flip"), [IMAGE]),
    "channel_roll": (_reorder("roll"), [IMAGE]),
    "channel_shuffle": (_reorder("shuffle"), [IMAGE]),
    "shuffle_unit": (ShuffleUnit, [IMAGE]),
    "channel_index": (_reorder("index"), [IMAGE]),
    "channel_softmax": (_reorder("softmax"), [IMAGE]),
    "channel_mean": (ChannelMean, [IMAGE]),
}


def topology(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """A conformance topology in eval mode with seeded weights, and example inputs; also the factory of
    `python:tests.tiny_prunable:topology?name=NAME` specs."""
    cls, shapes = TOPOLOGIES[name]
    torch.manual_seed(seed)
    model = cls().eval()
    inputs = tuple(torch.randint(0, 20, (2, 5)) if s == TOKENS else torch.randn(s) for s in shapes)
    return model, inputs

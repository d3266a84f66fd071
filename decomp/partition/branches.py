"""Group decomposition: a run of layers cut into G independent branches that run side by side, by pruning
the weights between channel groups (AlexNet's two-GPU groups, SplitNet).

A chain `layer -> through... -> then` (Linear or Conv2d layers with per-channel ops between them) becomes G
branches: branch g computes group g of `layer`'s output channels from the whole input, runs each `through`
layer from its group of input channels to its group of output channels only (block-diagonal: a grouped
convolution), and its share of `then` from its group of channels; the branches' outputs are summed. Nothing
crosses between branches from `layer` to the sum, so each runs on its own device.

- `group_split(model, chain, groups)`: which channels form each group, from the weights: spectral
  co-clustering (`sklearn.cluster.SpectralCoclustering`) of the first `through` layer's weight magnitudes
  (its output channels against its input channels) groups the first two channel spaces together; each
  later space assigns a layer's output channels to the group whose inputs they draw the most weight from;
  every grouping balanced (sizes differ by at most one: the branches take equal time), by an optimal
  assignment (`scipy.optimize.linear_sum_assignment`). Returns the `WidthSplit` with these `channels`.
- `group_masks(model, split)`: 1 where a `through` weight connects channels of one group, 0 between groups;
  `apply_masks` holds the weights between groups at zero as `torch.nn.utils.prune` masks (as decomp's
  unstructured pruning holds its zeros while retraining), so fine-tuning keeps them there;
  `decomp.pruning.make_permanent` folds them once trained.
- Then `split_width(model, inputs, [split])` rewrites the masked model into the branches (checked: the same
  outputs) and `width_plan` places branch g on part g; `decomp.partition.split_model`, export and the
  runtimes take it from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from decomp.errors import InvalidPlanError
from decomp.partition.width import WidthSplit

__all__ = ["apply_masks", "group_masks", "group_split"]


def _magnitude(layer: nn.Module) -> np.ndarray:
    """|weight| summed over kernel positions: (output channels, input channels)."""
    if not isinstance(layer, (nn.Linear, nn.Conv2d)) or (isinstance(layer, nn.Conv2d) and layer.groups != 1):
        raise InvalidPlanError(
            f"group decomposition takes nn.Linear and nn.Conv2d (groups=1), got {type(layer).__name__}"
        )
    w = layer.weight.detach().abs().float()
    return w.reshape(w.shape[0], w.shape[1], -1).sum(-1).cpu().numpy().astype(np.float64)


def _balanced(affinity: np.ndarray, groups: int) -> list[tuple[int, ...]]:
    """Channels (rows of `affinity`, one column per group) into `groups` groups whose sizes differ by at most
    one, maximising the total affinity of each channel to its group."""
    from scipy.optimize import linear_sum_assignment

    channels = affinity.shape[0]
    sizes = [len(c) for c in np.array_split(np.arange(channels), groups)]
    slot_group = np.repeat(np.arange(groups), sizes)
    rows, slots = linear_sum_assignment(-affinity[:, slot_group])
    out: list[list[int]] = [[] for _ in range(groups)]
    for row, slot in zip(rows.tolist(), slots.tolist(), strict=True):
        out[int(slot_group[slot])].append(row)
    return [tuple(sorted(g)) for g in out]


def _affinity(weights: np.ndarray, inputs: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Each output channel's weight magnitude from each group of input channels: (outputs, groups)."""
    return np.stack([weights[:, list(g)].sum(1) for g in inputs], axis=1)


def group_split(model: nn.Module, chain: Sequence[str], groups: int, seed: int = 0) -> WidthSplit:
    """The `WidthSplit` that cuts `chain` (module paths: first layer, the layers run through per group, the
    last layer) of `model` into `groups` branches, its channel groups chosen from the weights (see the module
    docstring)."""
    if len(chain) < 3:
        raise InvalidPlanError(
            f"a group decomposition needs at least 3 layers (first, run through per group, last), got {list(chain)}"
        )
    if groups < 2:
        raise InvalidPlanError(f"a group decomposition needs at least 2 groups, got {groups}")
    layers = [model.get_submodule(path) for path in chain]
    weights = [_magnitude(layer) for layer in layers]
    for path, w in zip(chain[1:], weights[1:], strict=True):
        if min(w.shape) < groups:
            raise InvalidPlanError(
                f"{path} has {w.shape[1]} input and {w.shape[0]} output channels: fewer than {groups} groups"
            )
    from sklearn.cluster import SpectralCoclustering

    first = weights[1] + 1e-12  # co-clustering needs no empty row or column
    cocluster = SpectralCoclustering(n_clusters=groups, random_state=seed).fit(first)
    rough = [tuple(np.flatnonzero(cocluster.row_labels_ == g).tolist()) or (g,) for g in range(groups)]
    # input channels of the first through layer: affinity to the row groups it feeds
    space0 = _balanced(np.stack([first[list(r)].sum(0) for r in rough], axis=1), groups)
    spaces = [space0]
    for w in weights[1:-1]:  # every through layer's outputs follow its inputs' groups
        spaces.append(_balanced(_affinity(w, spaces[-1]), groups))
    return WidthSplit(chain[0], groups, then=chain[-1], through=tuple(chain[1:-1]), channels=tuple(spaces))


def group_masks(model: nn.Module, split: WidthSplit) -> dict[str, torch.Tensor]:
    """Per `through` layer's weight (by parameter name): 1 where it connects an input and an output channel
    of one group, 0 between groups."""
    if split.channels is None or not split.through:
        raise InvalidPlanError(
            f"{split.layer}: a group decomposition's split names its channel groups and through layers"
        )
    masks = {}
    for j, path in enumerate(split.through, start=1):
        weight = model.get_submodule(path).weight
        mask = torch.zeros(weight.shape[:2], dtype=weight.dtype, device=weight.device)
        for inputs, outputs in zip(split.channels[j - 1], split.channels[j], strict=True):
            mask[torch.as_tensor(outputs)[:, None], torch.as_tensor(inputs)[None, :]] = 1
        masks[f"{path}.weight"] = mask.reshape(*mask.shape, *([1] * (weight.dim() - 2))).expand_as(weight).clone()
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Hold the weights the masks drop at zero (in place, through training): `torch.nn.utils.prune` masks,
    folded into plain weights by `decomp.pruning.make_permanent`."""
    for name, mask in masks.items():
        path, _, param = name.rpartition(".")
        torch_prune.custom_from_mask(model.get_submodule(path), param, mask)

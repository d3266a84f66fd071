"""decomp.pruning: coupling groups, pruning plans, importance criteria, masked and physical pruning,
training utilities (Han's iterative recipe, dynamic masks, learnable gates, sensitivity, distillation)."""

from decomp.pruning.apply import (
    MODES,
    PrunedModel,
    apply_plan,
    copy_model,
    make_permanent,
    mask_in_place,
    resolve_plan,
)
from decomp.pruning.dynamic import DynamicMasks
from decomp.pruning.estimate import Estimate, Estimator, estimate_pruned, kept_fractions
from decomp.pruning.gates import ChannelGates, GateStage
from decomp.pruning.groups import CouplingGroup, GroupIndex, annotate_graph, find_groups
from decomp.pruning.han import HanRound, adjust_dropout, dropout_baseline, han_prune, remove_dead_neurons
from decomp.pruning.importance import accumulate_gradients, channel_importance, plan_for_ratio
from decomp.pruning.plan import CRITERIA, GroupChoice, LayerSparsity, PruningPlan
from decomp.pruning.sensitivity import sensitivity
from decomp.pruning.train import Callback, TrainConfig, evaluate, recalibrate_batchnorm, train
from decomp.pruning.unstructured import (
    SparseSize,
    effective_weights,
    global_magnitude_plan,
    han_plan,
    prunable_layers,
    sparse_size,
)

__all__ = [
    "ChannelGates",
    "DynamicMasks",
    "Estimate",
    "Estimator",
    "estimate_pruned",
    "kept_fractions",
    "GateStage",
    "sensitivity",
    "Callback",
    "HanRound",
    "SparseSize",
    "TrainConfig",
    "adjust_dropout",
    "dropout_baseline",
    "effective_weights",
    "evaluate",
    "global_magnitude_plan",
    "han_plan",
    "han_prune",
    "make_permanent",
    "mask_in_place",
    "remove_dead_neurons",
    "sparse_size",
    "train",
    "CRITERIA",
    "MODES",
    "CouplingGroup",
    "GroupChoice",
    "GroupIndex",
    "LayerSparsity",
    "PrunedModel",
    "PruningPlan",
    "accumulate_gradients",
    "annotate_graph",
    "apply_plan",
    "copy_model",
    "channel_importance",
    "find_groups",
    "plan_for_ratio",
    "prunable_layers",
    "recalibrate_batchnorm",
    "resolve_plan",
]

"""decomp.pruning: coupling groups, pruning plans, importance criteria, masked and physical pruning."""

from decomp.pruning.apply import MODES, PrunedModel, apply_plan, resolve_plan
from decomp.pruning.groups import CouplingGroup, GroupIndex, annotate_graph, find_groups
from decomp.pruning.importance import accumulate_gradients, channel_importance, plan_for_ratio
from decomp.pruning.plan import CRITERIA, GroupChoice, LayerSparsity, PruningPlan

__all__ = [
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
    "channel_importance",
    "find_groups",
    "plan_for_ratio",
    "resolve_plan",
]

"""Attributes that mirror channel counts in a model's Python code and must follow a physical prune.

Torch-Pruning resizes layers; a model that also stores a width as a plain attribute (torchvision's
VisionTransformer keeps `hidden_dim` and reshapes with it) needs that attribute updated too.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

__all__ = ["register_fixup", "sync_attributes"]

_FIXUPS: dict[str, Callable[[nn.Module], None]] = {}


def _key(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_fixup(cls: type, fix: Callable[[nn.Module], None]) -> None:
    """Run `fix(module)` on every instance of `cls` after physical pruning."""
    _FIXUPS[_key(cls)] = fix


def sync_attributes(model: nn.Module) -> None:
    for module in model.modules():
        fix = _FIXUPS.get(_key(type(module)))
        if fix is not None:
            fix(module)


def _vision_transformer(m: nn.Module) -> None:
    m.hidden_dim = m.conv_proj.out_channels


_FIXUPS["torchvision.models.vision_transformer.VisionTransformer"] = _vision_transformer

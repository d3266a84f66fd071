"""Model specs: where a model comes from (`torchvision:NAME`, `hf:NAME`, `python:pkg.module:factory`).

A spec may carry constructor options after a `?`, e.g. `torchvision:resnet18?num_classes=10` or
`hf:gpt2?n_layer=2&n_embd=128`; values are read as JSON literals where they parse, else as strings.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from decomp.errors import SpecError, WeightsError
from decomp.resources import available_memory
from decomp.spec_text import format_options, import_factory, parse_options

__all__ = ["ModelSpec", "LoadedModel", "parse_spec", "load_model", "parse_input_shape", "load_weights"]

SPEC_FORMS = (
    "torchvision:NAME            a torchvision model, random weights (e.g. torchvision:resnet18)",
    "hf:MODEL_TYPE               a Hugging Face transformers model built from its config class, "
    "random weights, no hub access (e.g. hf:gpt2, hf:bert)",
    "python:pkg.module:factory   factory() returns an nn.Module or (module, example_inputs)",
    "any form may end with ?key=value&key=value (constructor or config options)",
)


def _forms() -> str:
    return "\n  ".join(SPEC_FORMS)


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: `source:name?options`."""

    source: str
    name: str
    options: tuple[tuple[str, Any], ...] = ()

    def __str__(self) -> str:
        return f"{self.source}:{self.name}{format_options(self.options)}"


@dataclass
class LoadedModel:
    """A model ready to trace: the module in eval mode, example inputs, and the tracer that suits it."""

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    spec: ModelSpec | None = None
    tracer: str = "fx"
    input_names: tuple[str, ...] = field(default=())


def parse_spec(text: str) -> ModelSpec:
    """Parse a spec string; an unknown form raises `SpecError` listing the valid ones."""
    body, _, query = text.partition("?")
    source, sep, name = body.partition(":")
    if not sep or not name or source not in ("torchvision", "hf", "python"):
        raise SpecError(f"unknown model spec {text!r}; valid forms:\n  {_forms()}")
    options = parse_options(query, text, "model spec")
    if source == "python" and name.count(":") != 1:
        raise SpecError(f"python spec must be python:pkg.module:factory, got {text!r}")
    return ModelSpec(source, name, options)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Read `1,3,224,224` or `1x3x224x224` into a shape tuple."""
    parts = text.replace("x", ",").replace(" ", "").split(",")
    try:
        shape = tuple(int(p) for p in parts if p)
    except ValueError:
        raise SpecError(f"input shape must be integers like 1,3,224,224, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise SpecError(f"input shape must be positive integers like 1,3,224,224, got {text!r}")
    return shape


def load_model(
    spec: str | ModelSpec,
    weights: str | Path | None = None,
    input_shapes: list[tuple[int, ...]] | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Build the model a spec names (eval mode), load optional weights, and make example inputs."""
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    torch.manual_seed(seed)
    loader = {"torchvision": _load_torchvision, "hf": _load_hf, "python": _load_python}[spec.source]
    loaded = loader(spec, input_shapes)
    loaded.module.eval()
    if weights is not None:
        load_weights(loaded.module, weights)
    return loaded


def _random_images(shapes: list[tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(s, generator=gen) for s in shapes)


def _load_torchvision(spec: ModelSpec, input_shapes) -> LoadedModel:
    import torchvision.models as tvm

    names = tvm.list_models()
    if spec.name not in names:
        raise SpecError(
            f"torchvision has no model {spec.name!r}; choose one of torchvision.models.list_models(), "
            f"e.g. {', '.join(sorted(n for n in names if n.startswith(('resnet', 'mobilenet'))))}"
        )
    try:
        module = tvm.get_model(spec.name, weights=None, **dict(spec.options))
    except TypeError as err:
        raise SpecError(f"bad option for torchvision:{spec.name}: {err}") from None
    if input_shapes is None:
        size = getattr(module, "image_size", None) or _torchvision_crop(spec.name)
        input_shapes = [(1, 3, size, size)]
    return LoadedModel(module, _random_images(input_shapes), spec, "fx")


def _torchvision_crop(name: str) -> int:
    """The evaluation crop size of the model's default weights (read from metadata, nothing downloaded)."""
    import torchvision.models as tvm

    try:
        transforms = tvm.get_model_weights(name).DEFAULT.transforms
    except (ValueError, AttributeError):
        return 224
    return int(getattr(transforms, "keywords", {}).get("crop_size", 224))


def _load_hf(spec: ModelSpec, input_shapes) -> LoadedModel:
    try:
        import transformers
    except ImportError:
        raise SpecError("hf: specs need the `transformers` package: pip install transformers") from None
    try:
        config = transformers.AutoConfig.for_model(spec.name)
    except ValueError:
        known = sorted(transformers.CONFIG_MAPPING.keys())
        raise SpecError(
            f"transformers has no model type {spec.name!r}; use a config model_type such as "
            f"gpt2, bert, llama, t5 ({len(known)} known, see transformers.CONFIG_MAPPING)"
        ) from None
    for key, _ in spec.options:
        if not hasattr(config, key):
            raise SpecError(f"{type(config).__name__} has no option {key!r} (from spec {spec})")
    if spec.options:  # through the constructor, so values derived from them (e.g. Llama's head_dim) follow
        try:
            config = transformers.AutoConfig.for_model(spec.name, **dict(spec.options))
        except (ValueError, TypeError) as err:
            raise SpecError(f"bad option for hf:{spec.name}: {err}") from None
    if hasattr(config, "use_cache"):
        config.use_cache = False  # a graph of one forward pass; no KV cache outputs
    _check_fits(spec, config)
    module = transformers.AutoModel.from_config(config)
    main = getattr(module, "main_input_name", "input_ids")
    gen = torch.Generator().manual_seed(0)
    if main == "pixel_values":
        if input_shapes is None:
            size = getattr(config, "image_size", 224)
            size = size if isinstance(size, int) else size[0]
            input_shapes = [(1, getattr(config, "num_channels", 3), size, size)]
        return LoadedModel(module, _random_images(input_shapes), spec, "export", (main,))
    if main != "input_ids":
        raise SpecError(f"hf:{spec.name} takes {main!r} as its main input; decomp makes token ids or images only")
    if input_shapes is None:
        seq = min(128, getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 128))
        input_shapes = [(1, seq)]
    vocab = getattr(config, "vocab_size", 1000)
    ids = tuple(torch.randint(0, vocab, s, generator=gen) for s in input_shapes)
    if not getattr(config, "is_encoder_decoder", False):
        return LoadedModel(module, ids, spec, "export", ("input_ids",))
    # encoder-decoder (T5, BART): the decoder reads token ids of the same shape, passed by position
    names = [n for n in inspect.signature(module.forward).parameters if n != "self"]
    if names[:3] != ["input_ids", "attention_mask", "decoder_input_ids"] or len(ids) != 1:
        raise SpecError(
            f"hf:{spec.name} is an encoder-decoder whose forward takes {names[:3]}; decomp passes "
            "(input_ids, attention_mask, decoder_input_ids) and one --input-shape"
        )
    start = getattr(config, "decoder_start_token_id", None) or 0
    decoder = torch.randint(0, vocab, ids[0].shape, generator=gen)
    decoder[:, 0] = start
    inputs = (ids[0], torch.ones_like(ids[0]), decoder)
    return LoadedModel(module, inputs, spec, "export", tuple(names[:3]))


def _check_fits(spec: ModelSpec, config) -> None:
    """Refuse, before any weight is made, a model whose float32 weights and the working copies pruning
    makes (about four) do not fit in this machine's available memory."""
    import transformers

    with torch.device("meta"):
        params = sum(p.numel() for p in transformers.AutoModel.from_config(config).parameters())
    need, have = 4 * 4 * params, available_memory()
    if have is not None and need > have:
        count = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.2f}M"
        raise SpecError(
            f"hf:{spec.name} from this config has {count} parameters; pruning it needs about "
            f"{need / 2**30:.1f} GiB (float32 weights and working copies), this machine has "
            f"{have / 2**30:.1f} GiB available. Give a smaller config in the spec, e.g. "
            f"hf:{spec.name}?num_hidden_layers=2&hidden_size=256&intermediate_size=688&num_attention_heads=8 "
            "(option names are the config class's)"
        )


def _load_python(spec: ModelSpec, input_shapes) -> LoadedModel:
    factory = import_factory(*spec.name.split(":"), what=f"spec {spec}")
    made = factory(**dict(spec.options))
    module, inputs = made if isinstance(made, tuple) else (made, None)
    if not isinstance(module, nn.Module):
        raise SpecError(f"{spec.name} returned {type(module).__name__}, expected an nn.Module")
    if input_shapes is not None:
        inputs = _random_images(input_shapes)
    if inputs is None:
        raise SpecError(
            f"{spec.name} returned no example inputs; give --input-shape, or return (module, example_inputs)"
        )
    inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    return LoadedModel(module, inputs, spec, "fx")


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a safetensors file or a state dict (never unpickling arbitrary objects) into `module`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
        raise WeightsError(
            f"cannot read weights {path}: {err}. Give a .safetensors file or a plain state dict saved with torch.save"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise WeightsError(f"weights {path} do not fit the model: {err}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys, e.g. {result.missing_keys[:3]}")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)} keys, e.g. {result.unexpected_keys[:3]}")
    if problems:
        raise WeightsError(f"weights {path} do not fit the model: {'; '.join(problems)}")

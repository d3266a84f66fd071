"""Model specs, input shapes and weights files."""

import pickle

import pytest
import torch
from safetensors.torch import save_file

from decomp import SpecError, WeightsError, load_model, parse_spec
from decomp.specs import load_weights, parse_input_shape
from tests.tiny_models import TinyNet


def test_parse_forms_and_options():
    spec = parse_spec("torchvision:resnet18?num_classes=10&name=abc")
    assert (spec.source, spec.name, dict(spec.options)) == (
        "torchvision",
        "resnet18",
        {"num_classes": 10, "name": "abc"},
    )
    assert parse_spec("python:pkg.mod:make").name == "pkg.mod:make"
    assert str(parse_spec("hf:gpt2?n_layer=2")) == "hf:gpt2?n_layer=2"


@pytest.mark.parametrize("text", ["resnet18", "tv:resnet18", "torchvision:", "python:pkg.mod"])
def test_unknown_spec_lists_valid_forms(text):
    with pytest.raises(SpecError) as info:
        parse_spec(text)
    assert text in str(info.value)
    if not text.startswith("python"):
        assert "torchvision:NAME" in str(info.value) and "python:pkg.module:factory" in str(info.value)


def test_bad_option_syntax():
    with pytest.raises(SpecError, match="key=value"):
        parse_spec("torchvision:resnet18?num_classes")


def test_input_shapes():
    assert parse_input_shape("1,3,224,224") == parse_input_shape("1x3x224x224") == (1, 3, 224, 224)
    with pytest.raises(SpecError, match="positive"):
        parse_input_shape("1,0,4")
    with pytest.raises(SpecError, match="integers"):
        parse_input_shape("a,b")


def test_python_spec_loads_factory_and_inputs():
    loaded = load_model("python:tests.tiny_models:tiny_net?classes=5")
    assert loaded.module(*loaded.example_inputs).shape == (1, 5)
    assert not loaded.module.training
    resized = load_model("python:tests.tiny_models:tiny_net", input_shapes=[(2, 3, 16, 16)])
    assert resized.example_inputs[0].shape == (2, 3, 16, 16)


def test_python_spec_errors():
    with pytest.raises(SpecError, match="cannot import 'nope'"):
        load_model("python:tests.tiny_models:nope")
    with pytest.raises(SpecError, match="no example inputs; give --input-shape"):
        load_model("python:tests.tiny_models:TinyNet")


def test_unknown_torchvision_model_suggests_names():
    with pytest.raises(SpecError, match="no model 'resnet19'.*resnet18"):
        load_model("torchvision:resnet19")


def test_torchvision_options_and_default_input():
    loaded = load_model("torchvision:squeezenet1_1?num_classes=7")
    assert loaded.example_inputs[0].shape == (1, 3, 224, 224)
    assert loaded.module.classifier[1].out_channels == 7


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_files_load(tmp_path, suffix):
    source = TinyNet()
    path = tmp_path / f"w{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    target = TinyNet()
    load_weights(target, path)
    assert all(
        torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    )


def test_weights_that_do_not_fit_are_named(tmp_path):
    path = tmp_path / "w.pt"
    state = TinyNet().state_dict()
    del state["fc.bias"]
    state["extra"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"missing 1 keys.*fc\.bias.*unexpected 1 keys.*extra"):
        load_weights(TinyNet(), path)
    torch.save(TinyNet(classes=3).state_dict(), path)
    with pytest.raises(WeightsError, match="size mismatch"):
        load_weights(TinyNet(), path)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_weights_are_never_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"w": _Evil()}))
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_weights(TinyNet(), path)
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(TinyNet(), tmp_path / "missing.pt")


def test_hf_options_go_through_the_config_constructor_so_derived_values_follow():
    loaded = load_model(
        "hf:llama?num_hidden_layers=1&hidden_size=32&intermediate_size=64&num_attention_heads=4&vocab_size=50"
    )
    assert loaded.module.layers[0].self_attn.head_dim == 8  # 32 / 4, not the default config's 128


def test_hf_image_models_get_pixel_values_and_encoder_decoders_get_decoder_ids():
    vit = load_model(
        "hf:vit?num_hidden_layers=1&hidden_size=32&intermediate_size=64&num_attention_heads=4&image_size=16"
    )
    assert [tuple(x.shape) for x in vit.example_inputs] == [(1, 3, 16, 16)] and vit.input_names == ("pixel_values",)
    t5 = load_model("hf:t5?num_layers=1&d_model=32&d_ff=64&num_heads=2&d_kv=16&vocab_size=50", input_shapes=[(2, 6)])
    assert t5.input_names == ("input_ids", "attention_mask", "decoder_input_ids")
    ids, mask, decoder = t5.example_inputs
    assert ids.shape == mask.shape == decoder.shape == (2, 6) and bool((decoder[:, 0] == 0).all())
    with torch.no_grad():
        assert t5.module(*t5.example_inputs).last_hidden_state.shape == (2, 6, 32)


def test_an_hf_model_too_large_for_this_machine_is_refused_before_its_weights_are_made(monkeypatch):
    import decomp.specs

    monkeypatch.setattr(decomp.specs, "available_memory", lambda: 1024)
    with pytest.raises(SpecError, match=r"has 0.\d\dM parameters; pruning it needs about .* Give a smaller config"):
        load_model("hf:gpt2?n_layer=1&n_embd=32&n_head=2&vocab_size=50")

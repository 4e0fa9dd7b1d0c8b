"""Hugging Face folders without transformers: jaxlm -> folder -> jaxlm round trips (exact),
sharded folders, dtypes, meshes, and the one-line named errors of partial, corrupt or
unsupported folders. (The comparisons with transformers itself are in test_pretrained_hf.py.)"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.layers import Mamba2Config
from jaxlm.models import (DecoderLM, ModelConfig, PretrainedError, load_pretrained,
                          save_pretrained)
from jaxlm.parallel import MeshConfig, make_mesh

MAMBA2 = ModelConfig(vocab_size=40, d_model=8, n_layers=2, pattern="mamba2", norm_eps=1e-5,
                     tie_embeddings=False, mamba2=Mamba2Config(d_state=4, head_dim=4, n_groups=2))


@pytest.fixture(scope="module")
def model():
    return nnx.jit(lambda: DecoderLM(MAMBA2, rngs=nnx.Rngs(0)))()


@pytest.fixture(scope="module")
def folder(model, tmp_path_factory):
    return save_pretrained(model, tmp_path_factory.mktemp("mamba2"))


def params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_round_trip_is_exact_and_keeps_the_config(model, folder):
    loaded, tokenizer = load_pretrained(folder)
    assert tokenizer is None
    assert loaded.config == MAMBA2
    for a, b in zip(params(loaded), params(model), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b).astype(a.dtype))  # (x64 init)


def test_sharded_folder_with_index_loads_the_same(model, tmp_path):
    save_pretrained(model, tmp_path, max_shard_bytes=2000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    loaded, _ = load_pretrained(tmp_path)
    for a, b in zip(params(loaded), params(model), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b).astype(a.dtype))  # (x64 init)


def test_dtype_and_mesh_place_each_tensor(folder):
    loaded, _ = load_pretrained(folder, dtype=jnp.bfloat16)
    assert {x.dtype for x in params(loaded)} == {jnp.dtype(jnp.bfloat16)}
    mesh = make_mesh(MeshConfig(fsdp=2, data=-1))
    sharded, _ = load_pretrained(folder, mesh=mesh)
    head = sharded.head.kernel[...]
    assert head.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")  # vocab 40 over 2
    np.testing.assert_array_equal(head, load_pretrained(folder)[0].head.kernel[...])


def test_tokenizer_json_is_read_and_written(model, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    save_pretrained(model, tmp_path, tokenizer=tokenizer)
    _, loaded = load_pretrained(tmp_path)
    assert loaded.encode("a b c").ids == [1, 2, 0]


def one_line_error(path, match, error=PretrainedError):
    with pytest.raises(error, match=match) as info:
        load_pretrained(path)
    assert "\n" not in str(info.value)
    return str(info.value)


def copy(folder, tmp_path):
    for f in folder.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def test_a_hub_name_says_to_pass_a_local_path():
    message = one_line_error("state-spaces/mamba-130m-hf", "local", FileNotFoundError)
    assert "downloads nothing" in message


def test_partial_and_corrupt_folders_fail_naming_the_file(model, folder, tmp_path):
    one_line_error(tmp_path, "no config.json")
    (tmp_path / "truncated").mkdir()
    broken = copy(folder, tmp_path / "truncated")
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    one_line_error(broken, "model.safetensors")
    (broken / "model.safetensors").unlink()
    one_line_error(broken, "neither model.safetensors")

    shards = tmp_path / "shards"
    save_pretrained(model, shards, max_shard_bytes=2000)
    next(shards.glob("model-00002-*.safetensors")).unlink()
    one_line_error(shards, r"lacks the shards \['model-00002-of")


def test_missing_and_misshapen_tensors_are_named(model, folder, tmp_path):
    from safetensors.numpy import load_file, save_file
    tensors = load_file(folder / "model.safetensors")
    work = copy(folder, tmp_path)
    save_file({k: v for k, v in tensors.items() if k != "lm_head.weight"},
              work / "model.safetensors")
    one_line_error(work, r"lacks the tensors \['lm_head.weight'\]")
    tensors["backbone.norm_f.weight"] = np.ones(3, np.float32)
    save_file(tensors, work / "model.safetensors")
    one_line_error(work, r"backbone.norm_f.weight has shape \[3\]; config.json implies \[8\]")


def test_unsupported_config_lists_every_field(folder, tmp_path):
    work = copy(folder, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (work / "config.json").write_text(json.dumps(
        {**config, "use_bias": True, "time_step_limit": [0.0, 2.0], "mystery": 1}))
    message = one_line_error(work, "cannot honour")
    for field in ("use_bias=True", "time_step_limit", "mystery (unknown field)"):
        assert field in message
    (work / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"],
                                                  "model_type": "gpt2"}))
    one_line_error(work, r"GPT2LMHeadModel.*jaxlm loads \['LlamaForCausalLM'")
    (work / "config.json").write_text(json.dumps({
        **config, "architectures": ["LlamaForCausalLM"], "num_attention_heads": 2,
        "intermediate_size": 8, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}))
    one_line_error(work, r"rope_type='dynamic'")


def test_models_without_a_hf_equivalent_are_refused_by_name(tmp_path):
    config = ModelConfig(vocab_size=16, d_model=8, n_layers=2, pattern="mamba,attention")
    model = nnx.eval_shape(lambda: DecoderLM(config, rngs=nnx.Rngs(0)))
    with pytest.raises(PretrainedError, match="pattern='mamba,attention'"):
        save_pretrained(model, tmp_path)


def test_rope_scalings_against_their_definitions():
    from jaxlm.ops.rope import rope_frequencies
    base = rope_frequencies(8, theta=100.0)
    np.testing.assert_allclose(base, 100.0 ** (-np.arange(4) / 4), rtol=1e-15)
    np.testing.assert_allclose(rope_frequencies(8, theta=100.0, scaling="linear", factor=4.0),
                               base / 4, rtol=1e-15)
    # llama3 with original length 16 (low 16, high 4 wavelengths): the longest wavelength
    # (2π/0.0316 ≈ 199) is divided by the factor, the shortest (2π) kept, those between
    # smoothly interpolated
    scaled = rope_frequencies(8, theta=100.0, scaling="llama3", factor=8.0,
                              low_freq_factor=1.0, high_freq_factor=4.0, original_max_length=16)
    wavelengths = 2 * np.pi / base
    smooth = (16 / wavelengths - 1) / 3
    want = np.where(wavelengths > 16, base / 8,
                    np.where(wavelengths < 4, base, (1 - smooth) * base / 8 + smooth * base))
    np.testing.assert_allclose(scaled, want, rtol=1e-15)
    with pytest.raises(ValueError, match="rope_scaling='yarn'"):
        from jaxlm.layers import AttentionConfig
        AttentionConfig(rope_scaling="yarn")

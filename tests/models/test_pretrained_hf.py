"""jaxlm's Hugging Face loader and saver against transformers itself: tiny random
``MambaForCausalLM``, ``Mamba2ForCausalLM`` (n_groups 1 and 2) and ``LlamaForCausalLM`` (GQA,
RoPE default / linear / llama3, tied and untied heads) made by transformers on CPU.

Tolerances: logits within 1e-5 (relative, float32); 1e-12 in float64, where transformers is run
with its float32 casts (norms, RoPE, softmax, residuals) turned into float64 casts, so that
both sides compute the same function in float64; greedy generations identical token for token.
Needs the ``hf`` extra (``pip install torch transformers``); skipped without it.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.models import DecoderLM, ModelConfig, generate, load_pretrained, save_pretrained
from jaxlm.layers import AttentionConfig, Mamba2Config, MambaConfig
from tests.helpers import rel_err

torch = pytest.importorskip("torch", reason="needs torch (pip install .[hf])")
transformers = pytest.importorskip("transformers", reason="needs transformers "
                                                          "(pip install .[hf])")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

VOCAB = 48
LLAMA3 = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

CASES = {
    "mamba": lambda: transformers.MambaConfig(
        vocab_size=VOCAB, hidden_size=8, state_size=4, num_hidden_layers=3, time_step_rank=3),
    "mamba-untied": lambda: transformers.MambaConfig(
        vocab_size=VOCAB, hidden_size=8, state_size=3, num_hidden_layers=2, expand=3,
        tie_word_embeddings=False),
    "mamba2-groups2": lambda: transformers.Mamba2Config(
        vocab_size=VOCAB, hidden_size=8, state_size=4, num_hidden_layers=3, num_heads=4,
        head_dim=4, n_groups=2, chunk_size=4),
    "mamba2-groups1-tied": lambda: transformers.Mamba2Config(
        vocab_size=VOCAB, hidden_size=8, state_size=5, num_hidden_layers=2, num_heads=8,
        head_dim=2, n_groups=1, tie_word_embeddings=True, layer_norm_epsilon=1e-4),
    "llama-gqa-llama3": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, rope_parameters=LLAMA3),
    "llama-tied-linear": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=20, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=6, tie_word_embeddings=True,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "linear", "rope_theta": 100.0,
                                            "factor": 2.0}),
}


@contextlib.contextmanager
def torch_float32_is_float64():
    """transformers casts to float32 in norms, RoPE, softmax and residuals whatever the model's
    dtype; this makes those casts float64 for the duration."""
    saved = torch.float32, torch.float, torch.Tensor.float
    torch.float32 = torch.float = torch.float64
    torch.Tensor.float = lambda self, *args, **kwargs: self.double()
    try:
        yield
    finally:
        torch.float32, torch.float, torch.Tensor.float = saved


def hf_model(case, dtype=torch.float32):
    torch.manual_seed(0)
    config = CASES[case]()
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    with torch.no_grad():  # visible norm weights and dt biases, not the initial ones
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
    return model


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor(np.asarray(ids))).logits.numpy()


def tokens(seed, shape):
    return np.random.default_rng(seed).integers(0, VOCAB, shape)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each case saved by transformers once."""
    out = {}
    for case in CASES:
        out[case] = tmp_path_factory.mktemp(case)
        hf_model(case).save_pretrained(out[case])
    return out


def step_logits(model, ids):
    """Logits of decoding ``ids`` one token at a time with ``step``."""
    state = model.init_state(ids.shape[0], max_length=ids.shape[1],
                             dtype=model.embed.embedding.value.dtype)

    def body(state, t):
        logits, state = model.step(t, state)
        return state, logits

    _, logits = jax.lax.scan(body, state, jnp.asarray(ids).T)
    return jnp.swapaxes(logits, 0, 1)


@pytest.mark.parametrize("case", sorted(set(CASES) - {"mamba-untied"}))  # that one: generation
def test_loaded_model_computes_hf_logits(case, folders):
    model, tokenizer = load_pretrained(folders[case])
    assert tokenizer is None  # transformers saved no tokenizer
    ids = tokens(1, (2, 9))
    want = hf_logits(transformers.AutoModelForCausalLM.from_pretrained(folders[case]), ids)
    got, stepped = jax.jit(lambda m, t: (m(t), step_logits(m, t)))(model, jnp.asarray(ids))
    assert got.dtype == jnp.float32
    assert rel_err(got, want) < 1e-5
    assert rel_err(stepped, got) < 1e-5


@pytest.mark.parametrize("case", ["mamba", "mamba2-groups2", "llama-gqa-llama3"])
def test_loaded_model_matches_hf_in_float64(case, folders):
    model, _ = load_pretrained(folders[case], dtype=jnp.float64)
    ids = tokens(2, (1, 7))
    hf = transformers.AutoModelForCausalLM.from_pretrained(folders[case], dtype=torch.float64)
    with torch_float32_is_float64():
        for module in hf.modules():  # RoPE's frequencies, made in float32 at construction
            if hasattr(module, "inv_freq"):
                init = (ROPE_INIT_FUNCTIONS.get(module.rope_type)
                        or type(module).compute_default_rope_parameters)
                module.inv_freq = init(module.config)[0]
        want = hf_logits(hf, ids)
    got = jax.jit(lambda m, t: m(t))(model, jnp.asarray(ids))
    assert got.dtype == jnp.float64
    assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("case", ["mamba-untied", "mamba2-groups2", "llama-gqa-llama3"])
def test_greedy_generation_is_hf_token_for_token(case, folders):
    model, _ = load_pretrained(folders[case])
    hf = transformers.AutoModelForCausalLM.from_pretrained(folders[case])
    prompt = tokens(3, (2, 5))
    with torch.no_grad():
        want = hf.generate(torch.tensor(prompt), max_new_tokens=6, do_sample=False,
                           min_new_tokens=6, pad_token_id=0).numpy()
    got = jax.jit(lambda m, p: generate(m, p, max_new_tokens=6))(model, jnp.asarray(prompt))
    np.testing.assert_array_equal(np.asarray(got), want)


def jaxlm_model(family, tie):
    """A randomly initialised DecoderLM of each family, with visible norm weights."""
    config = {
        "mamba": ModelConfig(vocab_size=VOCAB, d_model=8, n_layers=2, pattern="mamba",
                             norm_eps=1e-5, tie_embeddings=tie,
                             mamba=MambaConfig(d_state=4, dt_rank=2)),
        "mamba2": ModelConfig(vocab_size=VOCAB, d_model=8, n_layers=2, pattern="mamba2",
                              norm_eps=1e-5, tie_embeddings=tie,
                              mamba2=Mamba2Config(d_state=4, head_dim=4, n_groups=2)),
        "llama": ModelConfig(vocab_size=VOCAB, d_model=16, n_layers=2, pattern="attention",
                             d_ff=24, tie_embeddings=tie,
                             attention=AttentionConfig(n_heads=4, n_kv_heads=2, rope_theta=300.0,
                                                       rope_scaling="llama3", rope_factor=4.0,
                                                       rope_original_max_length=16)),
    }[family]

    @nnx.jit
    def build():
        model = DecoderLM(config, rngs=nnx.Rngs(5))
        for i, (path, v) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param))):
            if path[-1] == "scale":
                v[...] = v[...] + 0.2 * jax.random.normal(jax.random.key(i), v.shape)
        return model

    return build()


@pytest.mark.parametrize("family, tie", [("mamba", True), ("mamba2", False), ("llama", True)])
def test_saved_model_computes_the_same_logits_in_hf(family, tie, tmp_path):
    model = jaxlm_model(family, tie)
    save_pretrained(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf.config.tie_word_embeddings == tie
    ids = tokens(4, (2, 8))
    assert rel_err(hf_logits(hf, ids), jax.jit(lambda m, t: m(t))(model, jnp.asarray(ids))) < 1e-5


def test_sharded_checkpoint_written_by_hf_loads(tmp_path):
    hf = hf_model("llama-gqa-llama3")
    hf.save_pretrained(tmp_path, max_shard_size="8KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    model, _ = load_pretrained(tmp_path)
    ids = tokens(5, (1, 6))
    got = jax.jit(lambda m, t: m(t))(model, jnp.asarray(ids))
    assert rel_err(got, hf_logits(hf, ids)) < 1e-5

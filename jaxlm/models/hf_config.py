"""Hugging Face ``config.json`` <-> :class:`ModelConfig`, for the three families jaxlm computes
exactly: ``MambaForCausalLM`` ("mamba"), ``Mamba2ForCausalLM`` ("mamba2") and
``LlamaForCausalLM`` ("llama": RoPE with its "default", "linear" and "llama3" scalings, GQA,
RMSNorm, SwiGLU MLP, tied or untied embeddings).

A field that changes the function computed and holds a value jaxlm cannot honour, or a field
this module does not know, is an error (:class:`PretrainedError`) that lists every one of them;
fields that only concern initialisation, token ids, caching or bookkeeping are read and ignored.
"""

from __future__ import annotations

import math
from typing import Any

from jaxlm.layers import AttentionConfig, Mamba2Config, MambaConfig
from jaxlm.models.config import ModelConfig

ARCHITECTURES = {"MambaForCausalLM": "mamba", "Mamba2ForCausalLM": "mamba2",
                 "LlamaForCausalLM": "llama"}
MODEL_TYPES = {"mamba": "MambaForCausalLM", "mamba2": "Mamba2ForCausalLM",
               "llama": "LlamaForCausalLM"}

# Fields that do not change the function computed: transformers' bookkeeping, token ids,
# initialisation, caching, training-only options, and the leftovers of state-spaces/mamba's
# own config that transformers' configs accept and ignore.
IGNORED = {
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
    "_name_or_path", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache",
    "initializer_range", "output_attentions", "output_hidden_states", "return_dict",
    "rescale_prenorm_residual", "time_step_floor", "time_step_init_scheme", "time_step_scale",
    "use_mambapy", "use_associative_scan", "chunk_size", "attention_dropout", "pretraining_tp",
    "max_position_embeddings", "d_model", "n_layer", "fused_add_norm", "rms_norm",
    "ssm_cfg", "pad_vocab_size_multiple", "tie_embeddings", "quantization_config",
    "is_decoder", "tokenizer_class", "problem_type", "id2label", "label2id", "task_specific_params",
    # residual_in_fp32 keeps the residual stream in float32: the same function at float32
    "residual_in_fp32",
}


class PretrainedError(ValueError):
    """A checkpoint folder, config or tensor that jaxlm cannot read or honour."""


class _Fields:
    """Reads a config dict, remembering what was read and what cannot be honoured."""

    def __init__(self, hf: dict[str, Any], where: str):
        self.hf, self.where, self.used, self.problems = hf, where, set(), []

    def __call__(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        value = self.hf.get(name, default)
        return default if value is None else value

    def require(self, ok: bool, name: str, why: str) -> None:
        if not ok:
            self.problems.append(f"{name}={self.hf.get(name)!r} ({why})")

    def finish(self) -> None:
        unknown = sorted(set(self.hf) - self.used - IGNORED)
        problems = self.problems + [f"{name} (unknown field)" for name in unknown]
        if problems:
            raise PretrainedError(f"{self.where}: jaxlm cannot honour these config fields: "
                                  f"{'; '.join(problems)}")


def _float(value: Any) -> float:
    """transformers 5 writes infinities as {"__float__": "Infinity"}."""
    if isinstance(value, dict) and "__float__" in value:
        return float(value["__float__"])
    return float(value)


def family_of(hf: dict[str, Any], where: str) -> str:
    """The family ("mamba", "mamba2", "llama") of a config dict, from ``architectures`` or
    ``model_type``; a PretrainedError naming the supported ones otherwise."""
    archs = hf.get("architectures") or []
    known = [ARCHITECTURES[a] for a in archs if a in ARCHITECTURES]
    if known:
        return known[0]
    if not archs and hf.get("model_type") in MODEL_TYPES:
        return hf["model_type"]
    raise PretrainedError(f"{where}: architectures={archs} model_type={hf.get('model_type')!r} "
                          f"is not supported; jaxlm loads {sorted(ARCHITECTURES)}")


def model_config_from_hf(hf: dict[str, Any], where: str = "config.json"
                         ) -> tuple[str, ModelConfig]:
    """(family, ModelConfig) of a Hugging Face config dict (raises PretrainedError)."""
    family = family_of(hf, where)
    take = _Fields(hf, where)
    take.require(take("hidden_act", "silu") == "silu", "hidden_act", "jaxlm uses silu")
    d_model = take("hidden_size")
    common = dict(vocab_size=take("vocab_size"), d_model=d_model,
                  n_layers=take("num_hidden_layers"))
    for name in ("hidden_size", "vocab_size", "num_hidden_layers"):
        take.require(isinstance(hf.get(name), int), name, "a positive integer is required")
    if take.problems:
        take.finish()
    if family == "mamba":
        config = _mamba(take, common, d_model)
    elif family == "mamba2":
        config = _mamba2(take, common, d_model)
    else:
        config = _llama(take, common, d_model)
    take.finish()
    return family, config


def _mamba(take, common, d_model):
    expand = take("expand", 2)
    take.require(take("intermediate_size", expand * d_model) == expand * d_model,
                 "intermediate_size", f"must equal expand * hidden_size = {expand * d_model}")
    take.require(not take("use_bias", False), "use_bias", "jaxlm's Mamba has no in/out "
                                                           "projection biases")
    take("use_conv_bias", True)  # False: jaxlm's conv bias stays zero, the same function
    rank = take("time_step_rank", "auto")
    mamba = MambaConfig(d_state=take("state_size", 16), d_conv=take("conv_kernel", 4),
                        expand=expand, dt_rank=None if rank == "auto" else int(rank),
                        dt_min=take("time_step_min", 1e-3), dt_max=take("time_step_max", 0.1))
    return ModelConfig(**common, pattern="mamba", d_ff=0, norm_eps=take("layer_norm_epsilon", 1e-5),
                       tie_embeddings=take("tie_word_embeddings", True), mamba=mamba)


def _mamba2(take, common, d_model):
    expand, heads, head_dim = take("expand", 2), take("num_heads", 128), take("head_dim", 64)
    take.require(heads * head_dim == expand * d_model, "num_heads",
                 f"num_heads * head_dim must equal expand * hidden_size = {expand * d_model}")
    take.require(not take("use_bias", False), "use_bias", "jaxlm's Mamba-2 has no in/out "
                                                           "projection biases")
    take("use_conv_bias", True)
    take("time_step_rank")  # unused by Mamba-2
    limit = tuple(_float(v) for v in take("time_step_limit", (0.0, math.inf)))
    take.require(limit == (0.0, math.inf), "time_step_limit",
                 "jaxlm does not clamp the time step; (0.0, inf) is required")
    eps = take("layer_norm_epsilon", 1e-5)
    mamba2 = Mamba2Config(d_state=take("state_size", 128), head_dim=head_dim, expand=expand,
                          n_groups=take("n_groups", 8), d_conv=take("conv_kernel", 4),
                          dt_min=take("time_step_min", 1e-3), dt_max=take("time_step_max", 0.1),
                          norm_eps=eps)
    return ModelConfig(**common, pattern="mamba2", d_ff=0, norm_eps=eps,
                       tie_embeddings=take("tie_word_embeddings", False), mamba2=mamba2)


ROPE_KEYS = {"default": set(), "linear": {"factor"},
             "llama3": {"factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings"}}


def _llama(take, common, d_model):
    heads = take("num_attention_heads")
    kv_heads = take("num_key_value_heads", heads)
    head_dim = take("head_dim", d_model // heads)
    take.require(not take("attention_bias", False), "attention_bias", "jaxlm's attention has no "
                                                                      "biases")
    take.require(not take("mlp_bias", False), "mlp_bias", "jaxlm's MLP has no biases")
    # transformers 5: rope_parameters; earlier: rope_theta and rope_scaling
    rope = dict(take("rope_scaling") or {})
    rope.update(take("rope_parameters") or {})
    theta = rope.pop("rope_theta", take("rope_theta", 10_000.0))
    kind = rope.pop("rope_type", rope.pop("type", "default"))
    if rope.pop("partial_rotary_factor", 1.0) != 1.0:
        take.problems.append("rope_parameters.partial_rotary_factor (jaxlm rotates every "
                             "channel; 1.0 is required)")
    if kind not in ROPE_KEYS:
        take.problems.append(f"rope_type={kind!r} (supported: {sorted(ROPE_KEYS)})")
        kind = "default"
    extra = sorted(set(rope) - ROPE_KEYS[kind])
    if extra:
        take.problems.append(f"rope_parameters {extra} (unknown for rope_type={kind!r})")
    missing = sorted(ROPE_KEYS[kind] - set(rope))
    if missing:
        take.problems.append(f"rope_parameters lacks {missing} (required by rope_type={kind!r})")
    defaults = AttentionConfig()
    attention = AttentionConfig(
        n_heads=heads, n_kv_heads=kv_heads, head_dim=head_dim, rope=True,
        rope_theta=float(theta), rope_scaling=kind,
        rope_factor=float(rope.get("factor", defaults.rope_factor)),
        rope_low_freq_factor=float(rope.get("low_freq_factor", defaults.rope_low_freq_factor)),
        rope_high_freq_factor=float(rope.get("high_freq_factor",
                                             defaults.rope_high_freq_factor)),
        rope_original_max_length=int(rope.get("original_max_position_embeddings",
                                              defaults.rope_original_max_length)))
    if take.problems:
        take.finish()
    return ModelConfig(**common, pattern="attention", d_ff=take("intermediate_size"),
                       norm_eps=take("rms_norm_eps", 1e-6),
                       tie_embeddings=take("tie_word_embeddings", False), attention=attention)


def family_of_model(config: ModelConfig) -> str:
    """The Hugging Face family a ModelConfig can be saved as; PretrainedError naming what
    does not fit otherwise."""
    names = set(config.layer_mixers())
    problems = []
    if config.kind != "decoder":
        problems.append(f"kind={config.kind!r} (only 'decoder')")
    if config.ngram_heads:
        problems.append(f"ngram_heads={config.ngram_heads} (Hugging Face's models have none)")
    if config.learned_positions:
        problems.append("learned_positions=True (Hugging Face's models have none)")
    family = None
    if names == {"mamba"} or names == {"mamba2"}:
        family = names.pop()
        if config.d_ff:
            problems.append(f"d_ff={config.d_ff} (Hugging Face's {family} blocks have no MLP)")
        if family == "mamba2" and config.mamba2.norm_eps != config.norm_eps:
            problems.append(f"mamba2.norm_eps={config.mamba2.norm_eps} differs from "
                            f"norm_eps={config.norm_eps} (Hugging Face's Mamba2 has one epsilon)")
    elif names == {"attention"}:
        family = "llama"
        if not config.d_ff:
            problems.append("d_ff=0 (Llama blocks have an MLP)")
        if config.attention.window is not None or not config.attention.rope:
            problems.append("attention.window / attention.rope (Llama: full causal attention "
                            "with RoPE)")
    else:
        problems.append(f"pattern={config.pattern!r} (one of 'mamba', 'mamba2', 'attention' in "
                        f"every layer)")
    if problems:
        raise PretrainedError(f"save_pretrained: this model has no Hugging Face equivalent: "
                              f"{'; '.join(problems)}")
    return family


def hf_config_from_model(config: ModelConfig, dtype_name: str) -> dict[str, Any]:
    """The ``config.json`` dict of a ModelConfig (see :func:`family_of_model`)."""
    family = family_of_model(config)
    hf: dict[str, Any] = {"architectures": [MODEL_TYPES[family]], "model_type": family,
                          "vocab_size": config.vocab_size, "hidden_size": config.d_model,
                          "num_hidden_layers": config.n_layers, "hidden_act": "silu",
                          "tie_word_embeddings": config.tie_embeddings, "dtype": dtype_name}
    if family == "mamba":
        m = config.mamba
        hf.update(state_size=m.d_state, conv_kernel=m.d_conv, expand=m.expand,
                  intermediate_size=m.expand * config.d_model,
                  time_step_rank=m.dt_rank or math.ceil(config.d_model / 16),
                  time_step_min=m.dt_min, time_step_max=m.dt_max,
                  layer_norm_epsilon=config.norm_eps, use_bias=False, use_conv_bias=True)
    elif family == "mamba2":
        m = config.mamba2
        d_inner = m.expand * config.d_model
        hf.update(state_size=m.d_state, head_dim=m.head_dim, num_heads=d_inner // m.head_dim,
                  expand=m.expand, n_groups=m.n_groups, conv_kernel=m.d_conv,
                  time_step_min=m.dt_min, time_step_max=m.dt_max,
                  layer_norm_epsilon=config.norm_eps, use_bias=False, use_conv_bias=True)
    else:
        a = config.attention
        rope = {"rope_type": a.rope_scaling, "rope_theta": a.rope_theta}
        if a.rope_scaling != "default":
            rope["factor"] = a.rope_factor
        if a.rope_scaling == "llama3":
            rope.update(low_freq_factor=a.rope_low_freq_factor,
                        high_freq_factor=a.rope_high_freq_factor,
                        original_max_position_embeddings=a.rope_original_max_length)
        hf.update(intermediate_size=config.d_ff, num_attention_heads=a.n_heads,
                  num_key_value_heads=a.n_kv_heads or a.n_heads,
                  head_dim=a.head_dim or config.d_model // a.n_heads,
                  rms_norm_eps=config.norm_eps, rope_parameters=rope, attention_bias=False,
                  mlp_bias=False, max_position_embeddings=max(config.max_length,
                                                              a.rope_original_max_length))
    return hf


def weight_names(family: str, config: ModelConfig) -> list[tuple[str, tuple, str]]:
    """(Hugging Face tensor name, path of the DecoderLM parameter, layout) for every tensor:
    layout "linear" (HF [out, in] = jaxlm kernel [in, out] transposed), "conv" (HF depthwise
    conv [channels, 1, width] with the current token last = jaxlm [width, channels] with it
    first) or "same"."""
    rules = []
    if family in ("mamba", "mamba2"):
        rules.append(("backbone.embeddings.weight", ("embed", "embedding"), "same"))
        rules.append(("backbone.norm_f.weight", ("final_norm", "scale"), "same"))
        mixer = [("in_proj.weight", ("in_proj", "kernel"), "linear"),
                 ("conv1d.weight", ("conv", "weight"), "conv"),
                 ("conv1d.bias", ("conv", "bias"), "same"),
                 ("A_log", ("a_log",), "same"), ("D", ("d_skip",), "same"),
                 ("out_proj.weight", ("out_proj", "kernel"), "linear")]
        if family == "mamba":
            mixer += [("x_proj.weight", ("x_proj", "kernel"), "linear"),
                      ("dt_proj.weight", ("dt_proj", "kernel"), "linear"),
                      ("dt_proj.bias", ("dt_bias",), "same")]
        else:
            mixer += [("dt_bias", ("dt_bias",), "same"), ("norm.weight", ("norm", "scale"), "same")]
        for i in range(config.n_layers):
            prefix = f"backbone.layers.{i}."
            rules.append((prefix + "norm.weight", ("blocks", i, "mixer_norm", "scale"), "same"))
            rules += [(prefix + "mixer." + name, ("blocks", i, "mixer", *path), layout)
                      for name, path, layout in mixer]
    else:
        rules.append(("model.embed_tokens.weight", ("embed", "embedding"), "same"))
        rules.append(("model.norm.weight", ("final_norm", "scale"), "same"))
        for i in range(config.n_layers):
            prefix, block = f"model.layers.{i}.", ("blocks", i)
            rules += [(prefix + "input_layernorm.weight", (*block, "mixer_norm", "scale"), "same"),
                      (prefix + "post_attention_layernorm.weight", (*block, "mlp_norm", "scale"),
                       "same")]
            rules += [(f"{prefix}self_attn.{p}_proj.weight", (*block, "mixer", f"{p}_proj", "kernel"),
                       "linear") for p in "qkvo"]
            rules += [(f"{prefix}mlp.{p}_proj.weight", (*block, "mlp", p, "kernel"), "linear")
                      for p in ("gate", "up", "down")]
    if not config.tie_embeddings:
        rules.append(("lm_head.weight", ("head", "kernel"), "linear"))
    return rules


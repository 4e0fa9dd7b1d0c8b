"""The ops' contracts at the edges, in every form (reference and xla):

* packed rows: a document is a maximal run of equal ids ([0, 1, 0] are three documents); each
  op equals running each run alone (random non-monotone ids), and the exact small examples;
* log-gates anywhere in [-inf, 0] (-inf a full reset, -2e38 whose sums overflow) give exact
  results and finite gradients;
* causality under non-finite inputs: a NaN at a later position leaves earlier outputs, and the
  gradients of earlier outputs, exactly as in the clean run;
* empty inputs (batch 0 or length 0) give the empty result;
* integer inputs are promoted to float; a float ``block_mask`` is refused by name.

Tolerances: float64 forms agree with the float64 reference to 1e-10; the small examples and the
NaN checks are exact.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import ops
from jaxlm.ops.segments import document_ids
from tests.helpers import normal

TOL = 1e-10
FORMS = ("reference", "xla")
L = 7  # not a multiple of the chunk (3) or block (3) sizes below


# --------------------------------------------------------------------------------------------
# Every op as f(q, k, v, segment_ids, impl) -> [batch, length, heads, dv] on shared inputs
# (q, k: [b, L, 2, 4]; v: [b, L, 2, 3]), so one harness checks them all.


# Gates are functions of the inputs at the same position, so a slice of the inputs carries its
# gates along.
def _gates(x):
    return -0.5 * x ** 2


def _beta(x):
    return jax.nn.sigmoid(x[..., 0].astype(float))


def _gla(q, k, v, seg, impl):
    return ops.gated_linear_attention(q, k, v, _gates(k), segment_ids=seg, chunk_size=3,
                                      impl=impl)


def _linear(q, k, v, seg, impl):
    return ops.linear_attention(q, k, v, segment_ids=seg, chunk_size=3, impl=impl)


def _delta(q, k, v, seg, impl):
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    return ops.gated_delta_rule(q, k, v, _beta(q), _gates(v)[..., 0], segment_ids=seg,
                                chunk_size=3, impl=impl)


def _ssd(q, k, v, seg, impl):
    dt = jax.nn.softplus(q[..., 0])
    return ops.ssd(v, dt, jnp.array([-0.5, -1.0]), k[:, :, :1], q[:, :, :1], chunk_size=3,
                   segment_ids=seg, impl=impl)


def _selective(q, k, v, seg, impl):
    b, length = q.shape[:2]
    u = v.reshape(b, length, 6)
    A = -jnp.exp(normal(13, (6, 3)))
    return ops.selective_scan(u, jax.nn.softplus(u), A, k[:, :, 0, :3], q[:, :, 0, :3],
                              segment_ids=seg, chunk_size=3, impl=impl)[..., None]


def _diagonal(q, k, v, seg, impl):
    b, length = q.shape[:2]
    A = -0.5 + 1j * jnp.arange(6.0).reshape(3, 2)
    return ops.diagonal_ssm(v[:, :, 0], jnp.full((3,), 0.3), A, jnp.ones((3, 2)) + 0j,
                            jnp.ones((3, 2)) * 0.5 + 0j, segment_ids=seg, impl=impl)[..., None]


def _attention(q, k, v, seg, impl):
    return ops.attention(q, k[:, :, :1], v[:, :, :1], segment_ids=seg, impl=impl, block_size=3)


def _window(q, k, v, seg, impl):
    return ops.attention(q, k, v, segment_ids=seg, window=2, impl=impl, block_size=3)


def _conv(q, k, v, seg, impl):
    del impl
    x = v.reshape(*v.shape[:2], 6)
    return ops.causal_conv1d(x, normal(14, (3, 6)), segment_ids=seg)[..., None]


def _routing(q, k, v, seg, impl):
    del impl
    centroids = jnp.stack([jnp.eye(4)[:2], jnp.eye(4)[2:]])  # [heads 2, clusters 2, d 4]
    return ops.routing_attention(q, k, v, centroids, segment_ids=seg)


def _combiner(q, k, v, seg, impl):
    return ops.combiner_attention(q, k[:, :, :1], v[:, :, :1], block_size=2, segment_ids=seg,
                                  impl=impl)


def _core_context(q, k, v, seg, impl):
    return ops.core_context_attention(q, k, v, group_size=2, window=3, segment_ids=seg,
                                      impl=impl)


PACKED_OPS = {"combiner_attention": _combiner, "core_context_attention": _core_context,
              "gla": _gla, "linear_attention": _linear, "delta_rule": _delta, "ssd": _ssd,
              "selective_scan": _selective, "diagonal_ssm": _diagonal, "attention": _attention,
              "attention_window": _window, "causal_conv1d": _conv, "routing_attention": _routing}


def _inputs(batch=2, length=L):
    return (normal(1, (batch, length, 2, 4)), normal(2, (batch, length, 2, 4)),
            normal(3, (batch, length, 2, 3)))


def _runs(ids):
    """[(start, stop)] of the maximal runs of equal ids in one row."""
    cuts = [0] + [t for t in range(1, len(ids)) if ids[t] != ids[t - 1]] + [len(ids)]
    return list(zip(cuts[:-1], cuts[1:]))


@pytest.mark.parametrize("name", sorted(PACKED_OPS))
def test_packed_rows_equal_each_run_alone(name):
    """Random ids from {0, 1, 2} (they repeat and come back): every form equals the reference
    run on each maximal run of equal ids by itself. (The ops are causal, so a run alone is the
    row from the run's start, zero-padded to the row's length: one batch, one shape.)"""
    op = PACKED_OPS[name]
    q, k, v = _inputs()
    ids = np.random.default_rng(0).integers(0, 3, (2, L))
    ids[0, :3] = [2, 2, 0]  # a run of two, then ids that come back
    runs = [(row, start, stop) for row in range(2) for start, stop in _runs(ids[row])]
    shifted = [jnp.stack([jnp.pad(x[row, start:], [(0, start), (0, 0), (0, 0)])
                          for row, start, _ in runs]) for x in (q, k, v)]
    op = jax.jit(op, static_argnums=4)  # one compilation per form, not one per primitive
    each = op(*shifted, None, "reference")
    alone = np.zeros(each.shape[1:])[None].repeat(2, 0)
    for i, (row, start, stop) in enumerate(runs):
        alone[row, start:stop] = each[i, :stop - start]
    for impl in FORMS:
        packed = op(q, k, v, jnp.asarray(ids), impl)
        np.testing.assert_allclose(packed, alone, rtol=TOL, atol=TOL, err_msg=impl)


def test_document_ids_are_runs():
    ids = jnp.array([[0, 1, 0, 0, 5, 1], [3, 3, 3, 2, 2, 3]])
    np.testing.assert_array_equal(document_ids(ids), [[0, 1, 2, 2, 3, 4], [0, 0, 0, 1, 1, 2]])
    assert document_ids(None) is None


@pytest.mark.parametrize("impl", FORMS)
def test_an_id_that_comes_back_is_a_new_document(impl):
    """q = k = 1, v = [10, 20, 30], ids [0, 1, 0]: three documents, so o = v."""
    one = jnp.ones((1, 3, 1, 1))
    v = jnp.array([10.0, 20.0, 30.0]).reshape(1, 3, 1, 1)
    seg = jnp.array([[0, 1, 0]])
    outs = jax.jit(lambda: {  # one compilation
        "attention": ops.attention(one, one, v, segment_ids=seg, impl=impl),
        "gla": ops.gated_linear_attention(one, one, v, jnp.zeros((1, 3, 1)), scale=1.0,
                                          segment_ids=seg, impl=impl),
        "linear_attention": ops.linear_attention(one, one, v, scale=1.0, segment_ids=seg,
                                                 impl=impl),
        "delta_rule": ops.delta_rule(one, one, v, jnp.ones((1, 3, 1)), scale=1.0,
                                     segment_ids=seg, impl=impl),
        "ssd": ops.ssd(v, jnp.ones((1, 3, 1)), jnp.zeros((1,)), one, one, segment_ids=seg,
                       impl=impl),
    })()
    for name, out in outs.items():
        np.testing.assert_array_equal(out.ravel(), [10.0, 20.0, 30.0], err_msg=name)
    conv = ops.causal_conv1d(jnp.array([1.0, 2.0, 3.0]).reshape(1, 3, 1),
                             jnp.array([[1.0], [10.0], [100.0]]), segment_ids=seg)
    np.testing.assert_array_equal(conv.ravel(), [1.0, 2.0, 3.0])


def test_context_matches_and_words_read_runs():
    """context_matches reads runs (it equals itself on the canonical ids); a word layout gives
    each word the canonical id of its document, so [0, 1, 0] stays three documents."""
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 2, (2, 9)))
    seg = jnp.asarray(rng.integers(0, 3, (2, 9)))
    np.testing.assert_array_equal(ops.context_matches(tokens, 3, segment_ids=seg),
                                  ops.context_matches(tokens, 3, segment_ids=document_ids(seg)))
    from jaxlm.ops.words import word_layout
    layout = word_layout(jnp.array([[97, 97, 97]]), jnp.array([[0, 1, 0]]), max_word_len=4,
                         max_words=4, pad=0)
    np.testing.assert_array_equal(layout.lengths[0], [1, 1, 1, 0])
    np.testing.assert_array_equal(layout.segment_ids[0, :3], [0, 1, 2])


# --------------------------------------------------------------------------------------------
# Log-gates in [-inf, 0].


def _ones(length, dtype=jnp.float32):
    return jnp.ones((1, length, 1, 1), dtype)


GATE_OPS = {
    "gla_per_head": lambda g, impl: ops.gated_linear_attention(
        _ones(g.size), _ones(g.size), _ones(g.size), g.reshape(1, -1, 1), scale=1.0, impl=impl),
    "gla_per_channel": lambda g, impl: ops.gated_linear_attention(
        _ones(g.size), _ones(g.size), _ones(g.size), g.reshape(1, -1, 1, 1), scale=1.0,
        impl=impl),
    "gated_delta_rule": lambda g, impl: ops.gated_delta_rule(
        _ones(g.size), _ones(g.size), _ones(g.size), jnp.ones((1, g.size, 1)),
        g.reshape(1, -1, 1), scale=1.0, impl=impl),
}


@pytest.mark.parametrize("name", sorted(GATE_OPS))
@pytest.mark.parametrize("impl", FORMS)
def test_full_reset_and_huge_gates_are_exact(name, impl):
    """q = k = v = 1: log_g = [-inf] gives 1; [0, -inf] gives [1, 1]; [-2e38, -2e38] (whose sum
    overflows float32) gives [1, 1]."""
    for gates, want in (([-np.inf], [1.0]), ([0.0, -np.inf], [1.0, 1.0]),
                        ([-2e38, -2e38], [1.0, 1.0])):
        out = jax.jit(GATE_OPS[name], static_argnums=1)(jnp.array(gates, jnp.float32), impl)
        assert np.asarray(out).ravel().tolist() == want, gates


CONSTANT_DECAY_OPS = {  # dt = 1, so the log-decay of every step is A
    "ssd": lambda A, n, impl: ops.ssd(_ones(n), jnp.ones((1, n, 1), jnp.float32),
                                      jnp.array([A], jnp.float32), _ones(n), _ones(n),
                                      impl=impl),
    "selective_scan": lambda A, n, impl: ops.selective_scan(
        jnp.ones((1, n, 1), jnp.float32), jnp.ones((1, n, 1), jnp.float32),
        jnp.array([[A]], jnp.float32), jnp.ones((1, n, 1), jnp.float32),
        jnp.ones((1, n, 1), jnp.float32), impl=impl),
}


@pytest.mark.parametrize("name", sorted(CONSTANT_DECAY_OPS))
@pytest.mark.parametrize("impl", FORMS)
def test_full_reset_and_huge_decays_are_exact(name, impl):
    """Inputs 1 and dt·A = -inf (a reset at every step) or -2e38: every output is 1."""
    for A, n in ((-np.inf, 1), (-np.inf, 2), (-2e38, 2)):
        out = jax.jit(CONSTANT_DECAY_OPS[name], static_argnums=(1, 2))(A, n, impl)
        assert np.asarray(out).ravel().tolist() == [1.0] * n, (A, n)


def _random_gates(shape, seed):
    g = -jnp.abs(normal(seed, shape)) * 0.7
    cut = np.random.default_rng(seed).random(shape) < 0.25
    return jnp.where(jnp.asarray(cut), -jnp.inf, g)


@pytest.mark.parametrize("name", ["gla_per_channel", "gla_per_head", "gated_delta_rule", "ssd",
                                  "selective_scan"])
def test_random_gates_with_resets_match_the_reference(name):
    """Gates with about one -inf in four (chunks of 3, length 7; for the SSMs A = -inf in one
    channel): the xla form equals the float64 reference, values and gradients, and every
    gradient is finite."""
    q, k, v = _inputs(1)
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
    g4 = _random_gates((1, L, 2, 4), 5)
    beta = _beta(q)

    def run(q, k, v, impl):
        if name == "gla_per_channel":
            return ops.gated_linear_attention(q, k, v, g4, chunk_size=3, impl=impl)
        if name == "gla_per_head":
            return ops.gated_linear_attention(q, k, v, g4[..., 0], chunk_size=3, impl=impl)
        if name == "gated_delta_rule":
            return ops.gated_delta_rule(q, k, v, beta, g4[..., 0], chunk_size=3, impl=impl)
        if name == "selective_scan":  # channel 1, state 0: a reset at every step
            A = jnp.array([[-1.0, -0.5], [-jnp.inf, -0.3]])
            return ops.selective_scan(v[..., 0], jax.nn.softplus(q[..., 0]), A,
                                      k[:, :, 0, :2], q[:, :, 1, :2], chunk_size=3, impl=impl)
        # Head 1: dt·A = -inf, a reset at every step (finite gradients in dt too).
        A = jnp.array([-1.0, -jnp.inf])
        return ops.ssd(v, jax.nn.softplus(q[..., 0]), A, k[:, :, :1], q[:, :, :1],
                       chunk_size=3, impl=impl)

    weights = normal(9, jax.eval_shape(functools.partial(run, impl="reference"), q, k, v).shape)

    @functools.partial(jax.jit, static_argnums=3)
    def value_and_grads(q, k, v, impl):
        loss = lambda q, k, v: jnp.sum(run(q, k, v, impl) * weights)
        return run(q, k, v, impl), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

    forms = FORMS + (("pallas_interpret",) if name == "selective_scan" else ())
    ref, ref_grads = value_and_grads(q, k, v, "reference")
    for impl in forms[1:]:
        fast, fast_grads = value_and_grads(q, k, v, impl)
        np.testing.assert_allclose(fast, ref, rtol=TOL, atol=TOL, err_msg=impl)
        for g_ref, g_fast in zip(ref_grads, fast_grads):
            assert bool(jnp.all(jnp.isfinite(g_fast))), impl
            np.testing.assert_allclose(g_fast, g_ref, rtol=TOL, atol=TOL, err_msg=impl)


@pytest.mark.parametrize("impl", FORMS)
def test_gate_gradients_are_finite_at_a_reset(impl):
    """The gradient with respect to the log-gates themselves is finite (0 at a -inf gate)."""
    q, k, v = _inputs(1)
    g = _random_gates((1, L, 2, 4), 6)
    grad = jax.grad(lambda g: jnp.sum(ops.gated_linear_attention(
        q, k, v, g, chunk_size=3, impl=impl)))(g)
    assert bool(jnp.all(jnp.isfinite(grad)))
    assert bool(jnp.all(jnp.where(jnp.isinf(g), grad == 0, True)))


# --------------------------------------------------------------------------------------------
# Causality under non-finite inputs.


def _block_sparse(q, k, v, seg, impl):
    del seg
    n = -(-q.shape[1] // 3)
    mask = jnp.tril(jnp.ones((n, n), bool)).at[2, 0].set(False)[None, None]
    return ops.block_sparse_attention(q, k, v, mask, block_size=3, impl=impl)


def _lambda(q, k, v, seg, impl):
    del seg
    return ops.lambda_attention(q, k, v, window=2, sink_tokens=1, block_size=3, impl=impl)


def _wide_conv(q, k, v, seg, impl):
    del impl, seg
    x = v.reshape(*v.shape[:2], 6)
    return ops.causal_conv1d(x, normal(15, (10, 6)))[..., None]  # the FFT path


CAUSAL_OPS = dict(PACKED_OPS, block_sparse_attention=_block_sparse, lambda_attention=_lambda,
                  causal_conv1d_fft=_wide_conv)
CAUSAL_OPS.pop("diagonal_ssm")  # its FFT form is documented as not causal under NaN
CAUSAL_OPS["diagonal_ssm_reference"] = lambda q, k, v, seg, impl: _diagonal(
    q, k, v, seg, "reference")


@pytest.mark.parametrize("name", sorted(CAUSAL_OPS))
@pytest.mark.parametrize("impl", FORMS)
def test_a_later_nan_leaves_earlier_outputs_exact(name, impl):
    """NaN in q, k and v at position 5: outputs 0..4 equal the clean run's exactly (FFT: to
    1e-12), and the gradients of those outputs equal the clean ones (finite) at the earlier
    positions."""
    op = functools.partial(CAUSAL_OPS[name], seg=None, impl=impl)
    clean = _inputs(1)
    dirty = tuple(x.at[:, 5].set(jnp.nan) for x in clean)
    early = lambda *x: jnp.sum(op(*x)[:, :5] * jnp.arange(1.0, 6.0)[:, None, None])

    @jax.jit
    def run(*x):  # outputs, gradients of the early outputs, gradients of all outputs
        return (op(*x), jax.grad(early, argnums=(0, 1, 2))(*x),
                jax.grad(lambda *x: jnp.sum(op(*x)), argnums=(0, 1, 2))(*x))

    (out_clean, g_clean, _), (out_dirty, g_dirty, g_all) = run(*clean), run(*dirty)
    # Exact, but for the FFT, whose every output sums every (zeroed) input: rounding differs.
    tol = 1e-12 if name == "causal_conv1d_fft" else 0
    np.testing.assert_allclose(out_dirty[:, :5], out_clean[:, :5], rtol=tol, atol=tol)
    assert bool(jnp.any(jnp.isnan(out_dirty[:, 5:])))
    for a, b in zip(g_dirty, g_clean):
        np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=1e-12, atol=1e-12)
    # The whole output's gradient (a finite cotangent on the NaN outputs too) stays finite at
    # the earlier positions.
    assert all(bool(jnp.all(jnp.isfinite(g[:, :5]))) for g in g_all)


# --------------------------------------------------------------------------------------------
# Empty inputs.


def _z(*shape):
    return jnp.zeros(shape)


def _complex(*shape):
    return -jnp.ones(shape) + 0j


EMPTY_OPS = {
    "attention": lambda b, n, impl: ops.attention(_z(b, n, 2, 4), _z(b, n, 1, 4),
                                                  _z(b, n, 1, 3), impl=impl),
    "gla": lambda b, n, impl: ops.gated_linear_attention(
        _z(b, n, 2, 4), _z(b, n, 2, 4), _z(b, n, 2, 3), _z(b, n, 2, 4),
        return_final_state=True, impl=impl),
    "linear_attention": lambda b, n, impl: ops.linear_attention(
        _z(b, n, 2, 4), _z(b, n, 2, 4), _z(b, n, 2, 3), normalize=True, impl=impl),
    "gated_delta_rule": lambda b, n, impl: ops.gated_delta_rule(
        _z(b, n, 2, 4), _z(b, n, 2, 4), _z(b, n, 2, 3), _z(b, n, 2), _z(b, n, 2),
        return_final_state=True, impl=impl),
    "selective_scan": lambda b, n, impl: ops.selective_scan(
        _z(b, n, 3), _z(b, n, 3), -jnp.ones((3, 2)), _z(b, n, 2), _z(b, n, 2),
        return_final_state=True, impl=impl),
    "ssd": lambda b, n, impl: ops.ssd(_z(b, n, 2, 3), _z(b, n, 2), -jnp.ones(2), _z(b, n, 1, 2),
                                      _z(b, n, 1, 2), return_final_state=True, impl=impl),
    "diagonal_ssm": lambda b, n, impl: ops.diagonal_ssm(
        _z(b, n, 3), jnp.ones(3), _complex(3, 2), _complex(3, 2), _complex(3, 2), impl=impl),
    "s4_ssm": lambda b, n, impl: ops.s4_ssm(_z(b, n, 3), jnp.ones(3), _complex(3, 2),
                                            _complex(3, 2), _complex(3, 2), _complex(3, 2),
                                            impl=impl),
    "block_sparse_attention": lambda b, n, impl: ops.block_sparse_attention(
        _z(b, n, 2, 4), _z(b, n, 1, 4), _z(b, n, 1, 3),
        jnp.ones((1, 1, -(-n // 2), -(-n // 2)), bool), block_size=2, impl=impl),
    "lambda_attention": lambda b, n, impl: ops.lambda_attention(
        _z(b, n, 2, 4), _z(b, n, 1, 4), _z(b, n, 1, 3), window=2, sink_tokens=1, block_size=2,
        impl=impl),
    "causal_conv1d": lambda b, n, impl: ops.causal_conv1d(
        _z(b, n, 3), jnp.ones((4 if impl == "reference" else 12, 3)),
        segment_ids=jnp.zeros((b, n), int) if impl == "reference" else None),
    "routing_attention": lambda b, n, impl: ops.routing_attention(
        _z(b, n, 2, 4), _z(b, n, 1, 4), _z(b, n, 1, 3), jnp.ones((2, 3, 4)),
        cluster_size=None if impl == "reference" else 2),
    "combiner_attention": lambda b, n, impl: ops.combiner_attention(
        _z(b, n, 2, 4), _z(b, n, 1, 4), _z(b, n, 1, 3), block_size=2, impl=impl),
    "core_context_attention": lambda b, n, impl: ops.core_context_attention(
        _z(b, n, 2, 4), _z(b, n, 1, 4), _z(b, n, 1, 3), group_size=2, window=2, impl=impl),
    "select_blocks": lambda b, n, impl: ops.select_blocks(_z(b, n, 2, 4), _z(b, n, 1, 4),
                                                          block_size=2, top_k=1),
    "context_matches": lambda b, n, impl: ops.context_matches(jnp.zeros((b, n), int), 2),
}


@pytest.mark.parametrize("name", sorted(EMPTY_OPS))
@pytest.mark.parametrize("impl", FORMS)
@pytest.mark.parametrize("batch, length", [(0, 3), (2, 0)])
def test_empty_inputs_give_empty_results(name, impl, batch, length):
    out = EMPTY_OPS[name](batch, length, impl)
    first = jax.tree.leaves(out)[0]
    assert first.shape[0] == batch and 0 in first.shape
    if isinstance(out, tuple) and length == 0 and batch:  # the final state: the initial one
        assert bool(jnp.all(out[1] == 0))


# --------------------------------------------------------------------------------------------
# Dtypes.


@pytest.mark.parametrize("name", sorted(PACKED_OPS))
def test_integer_inputs_are_promoted_to_float(name):
    """Integer q, k, v give the float result of the same values (not truncated integers)."""
    op = jax.jit(PACKED_OPS[name], static_argnums=4)
    ints = tuple(jnp.asarray(np.random.default_rng(i).integers(-2, 3, x.shape))
                 for i, x in enumerate(_inputs(1)))
    out = op(*ints, None, "xla")
    assert jnp.issubdtype(out.dtype, jnp.floating)
    np.testing.assert_allclose(out, op(*(x.astype(float) for x in ints), None, "xla"),
                               rtol=TOL, atol=TOL)


def test_a_float_block_mask_is_named():
    q = jnp.ones((1, 4, 1, 2))
    with pytest.raises(TypeError, match="block_mask"):
        ops.block_sparse_attention(q, q, q, jnp.ones((1, 1, 2, 2)), block_size=2)


def test_selective_scan_step_at_a_full_reset():
    """The step form with A = -inf: Δ > 0 resets the state to the input, Δ = 0 passes it
    through unchanged, and the gradient in Δ > 0 is finite and exact (the reset channel adds
    0, not 0 · -inf), as in the scan's forms."""
    from jaxlm.ops.selective import selective_scan_step
    A = jnp.array([[-jnp.inf, -0.5]])
    state, u = jnp.full((1, 1, 2), 3.0), jnp.ones((1, 1))
    B, C = jnp.ones((1, 1, 2)), jnp.ones((1, 1, 2))
    _, reset = selective_scan_step(state, u, jnp.full((1, 1), 0.5), A, B, C)
    np.testing.assert_allclose(reset[0, 0], [0.5, 3.0 * np.exp(-0.25) + 0.5], rtol=1e-12)
    _, kept = selective_scan_step(state, u, jnp.zeros((1, 1)), A, B, C)
    np.testing.assert_array_equal(kept, state)
    grad = jax.grad(lambda dt: selective_scan_step(state, u, dt, A, B, C)[0].sum())(
        jnp.full((1, 1), 0.5))
    # d/dΔ of [Δ u] + [3 exp(-0.5 Δ) + Δ u] at Δ = 0.5
    np.testing.assert_allclose(grad[0, 0], 1.0 + 3.0 * -0.5 * np.exp(-0.25) + 1.0, rtol=1e-12)

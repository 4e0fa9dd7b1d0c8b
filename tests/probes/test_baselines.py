"""Classical baselines and closed forms: the numbers the trained models are compared with."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.data import LinearRegressionConfig, regression_prompt
from jaxlm.models.lsa import lsa_optimum, lsa_predict, lsa_risk
from jaxlm.probes import LSAConfig, baseline_predictions, ngram_predictions, train_lsa
from jaxlm.probes.regular_language import validity

D, K = 4, 9


@pytest.fixture(scope="module")
def curves():
    config = LinearRegressionConfig(n_dims=D, num_points=K)
    keys = jax.random.split(jax.random.key(0), 4000)
    xs, ys, _ = jax.vmap(lambda k: regression_prompt(k, config))(keys)
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    preds = baseline_predictions(xs, ys, ridge=1e-8)
    return {name: np.mean(np.square(p - ys), 0) / D for name, p in preds.items()}


def test_least_squares_matches_its_closed_form(curves):
    """Noiseless, isotropic: the minimum-norm fit of n < d points leaves error 1 - n/d, and
    n >= d points determine w exactly. Monte Carlo over 4000 prompts: tolerance 0.06 (a few
    standard errors of a mean of chi-square-like terms)."""
    ls = curves["least_squares"]
    np.testing.assert_allclose(ls[:D], 1 - np.arange(D) / D, atol=0.06)
    assert ls[D:].max() < 1e-6
    np.testing.assert_allclose(curves["ridge"][D + 1:], 0, atol=1e-4)  # ridge -> least squares


def test_averaging_and_zero_match_their_closed_forms(curves):
    """Averaging w = (1/n) sum y_i x_i has error (d + 1) / n; predicting 0 has error 1.
    The averaging error is a fourth moment of Gaussians (heavy-tailed): over 4000 prompts its
    relative standard error is about 4%, so the tolerance is 15% (d / n, off by 25%, fails)."""
    n = np.arange(1, K)
    np.testing.assert_allclose(curves["averaging"][1:], (D + 1) / n, rtol=0.15)
    np.testing.assert_allclose(curves["zero"], 1, atol=0.06)
    assert np.isfinite(curves["nearest_3"]).all() and curves["nearest_3"][-1] > 0.5


def test_lsa_risk_matches_monte_carlo():
    """E(y_hat - y)^2 of the closed-form optimum, in and out of the training prompt length and
    for a skewed covariance, against 100k sampled prompts (tolerance 2%, about 4 standard
    errors)."""
    keys = jax.random.split(jax.random.key(1), 100_000)
    for covariance, n_train, n_test in (("isotropic", 10, 10), ("isotropic", 10, 20),
                                        ("skewed", 10, 10)):
        config = LinearRegressionConfig(n_dims=3, num_points=n_test + 1, covariance=covariance)
        xs, ys, _ = jax.vmap(lambda k: regression_prompt(k, config))(keys)
        w_pv, w_kq = lsa_optimum(config.eigenvalues(), n_train)
        mc = jnp.mean(jnp.square(lsa_predict(w_pv, w_kq, xs, ys) - ys[:, -1]))
        np.testing.assert_allclose(mc, lsa_risk(config.eigenvalues(), n_train, n_test),
                                   rtol=0.02)
    np.testing.assert_allclose(lsa_risk(jnp.ones(5), 20), 5 * 6 / 26, rtol=1e-12)


def test_trained_lsa_reaches_the_closed_form_minimum():
    """Gradient descent from the paper's initialisation lands within 5% of the optimum's loss
    on the same test prompts (the issue's criterion)."""
    result = train_lsa(LSAConfig(n_dims=3, n_train=10, n_test=10, steps=600, batch_size=500,
                                 learning_rate=0.01, test_prompts=20_000))
    assert result["ratio"] < 1.05, result
    assert abs(result["optimum_loss"] / result["theory_loss"] - 1) < 0.05


def test_ngram_predictions_back_off():
    tokens = np.array([5, 6, 7, 5, 6, 7, 5, 6, 8, 5, 6])
    np.testing.assert_array_equal(ngram_predictions(tokens, 1), [5] * 11)
    # After "6" the bigram model has seen 7 twice; after the new "8" it backs off to unigrams.
    bigram = ngram_predictions(tokens, 2)
    assert bigram[4] == 7 and bigram[8] == 5
    # The trigram context (5, 6) was followed by 7, 7, 8: the majority wins.
    assert ngram_predictions(tokens, 3)[10] == 7


def test_validity_counts_allowed_predictions():
    valid = np.zeros((3, 5), bool)
    valid[0, 2] = valid[1, 3] = valid[2, 4] = True
    ok, n = validity(np.array([2, 4, -1]), valid, np.array([True, True, True]))
    assert (ok, n) == (1, 3)


def test_in_context_unigram_counts_only_the_document_so_far():
    from jaxlm.data import IGNORE
    from jaxlm.data.text import BYTE_VOCAB
    from jaxlm.probes.text import in_context_unigram_bits
    rng = np.random.default_rng(0)
    inputs = rng.integers(97, 101, (3, 20))  # 4 letters, so counts repeat
    segments = np.sort(rng.integers(0, 3, (3, 20)), axis=1)
    targets = np.concatenate([inputs[:, 1:], np.full((3, 1), IGNORE)], 1)
    targets[:, :-1][segments[:, 1:] != segments[:, :-1]] = IGNORE  # no target across documents
    bits = nbytes = 0.0
    for row in range(3):  # the obvious loop: count this document's inputs up to t
        for t in range(20):
            if targets[row, t] == IGNORE:
                continue
            same = [s for s in range(t + 1) if segments[row, s] == segments[row, t]]
            hits = sum(inputs[row, s] == targets[row, t] for s in same)
            bits -= np.log2((hits + 0.5) / (len(same) + 0.5 * BYTE_VOCAB))
            nbytes += 1
    batch = {"inputs": inputs, "targets": targets, "segment_ids": segments}
    assert np.isclose(in_context_unigram_bits([batch]), bits / nbytes, rtol=1e-12)


def _rows_of_documents(rng, vocab=4, rows=3, length=30):
    """Rows of a few documents over ``vocab`` letters, targets IGNORE across documents."""
    from jaxlm.data import IGNORE
    inputs = rng.integers(97, 97 + vocab, (rows, length))
    segments = np.sort(rng.integers(0, 3, (rows, length)), axis=1)
    targets = np.concatenate([inputs[:, 1:], np.full((rows, 1), IGNORE)], 1)
    targets[:, :-1][segments[:, 1:] != segments[:, :-1]] = IGNORE
    return {"inputs": inputs, "targets": targets, "segment_ids": segments}


def test_in_context_ppm_of_order_0_is_escape_method_c_over_the_document_so_far():
    """Order 0: p(x) = c_x / (n + d) + d / (n + d) / vocab, with n tokens and d distinct ones
    in the document up to t."""
    from jaxlm.data import IGNORE
    from jaxlm.data.text import BYTE_VOCAB
    from jaxlm.probes.text import in_context_ppm_bits
    batch = _rows_of_documents(np.random.default_rng(1))
    bits = nbytes = 0.0
    for inputs, targets, segments in zip(batch["inputs"], batch["targets"], batch["segment_ids"]):
        for t, target in enumerate(targets):
            if target == IGNORE:
                continue
            seen = [x for x, s in zip(inputs[:t + 1], segments[:t + 1]) if s == segments[t]]
            n, d = len(seen), len(set(seen))
            bits -= np.log2(seen.count(target) / (n + d) + d / (n + d) / BYTE_VOCAB)
            nbytes += 1
    assert np.isclose(in_context_ppm_bits([batch], order=0), bits / nbytes, rtol=1e-12)


def test_in_context_ppm_is_unchanged_by_relabelling_and_learns_repeats():
    from jaxlm.data import IGNORE
    from jaxlm.data.text import BYTE_VOCAB
    from jaxlm.probes.text import in_context_ppm_bits
    batch = _rows_of_documents(np.random.default_rng(2))
    pi = np.random.default_rng(3).permutation(BYTE_VOCAB)
    relabelled = {"inputs": pi[batch["inputs"]], "segment_ids": batch["segment_ids"],
                  "targets": np.where(batch["targets"] == IGNORE, IGNORE,
                                      pi[np.maximum(batch["targets"], 0)])}
    for order in (0, 2, 3):
        assert np.isclose(in_context_ppm_bits([relabelled], order=order),
                          in_context_ppm_bits([batch], order=order), rtol=1e-12)
    periodic = np.tile(np.arange(97, 101), 16)[None]  # "abcdabcd...": one document
    rows = {"inputs": periodic[:, :-1], "targets": periodic[:, 1:],
            "segment_ids": np.zeros_like(periodic[:, 1:])}
    assert in_context_ppm_bits([rows], order=3) < 1.0 < in_context_ppm_bits([rows], order=0)


def test_lsa_takes_numpy_arrays():
    config = LinearRegressionConfig(n_dims=3, num_points=5)
    xs, ys, _ = jax.vmap(lambda k: regression_prompt(k, config))(
        jax.random.split(jax.random.key(0), 2))
    w_pv, w_kq = lsa_optimum(config.eigenvalues(), 4)
    expected = lsa_predict(w_pv, w_kq, xs, ys)
    got = lsa_predict(*(np.asarray(x) for x in (w_pv, w_kq, xs, ys)))
    assert isinstance(got, jax.Array)
    np.testing.assert_allclose(got, expected, rtol=1e-12)

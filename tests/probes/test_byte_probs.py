"""Exact byte-level probabilities from a token LM (jaxlm.probes.byte_probs) against brute-force
marginalisation of a toy token LM over every token string it can emit."""

import itertools

import numpy as np
import pytest

from jaxlm.data.subword import train_subwords
from jaxlm.probes.byte_probs import (END, byte_log_likelihoods, cover_encodings, lm_scorer,
                                     naive_next_byte_distribution, next_byte_distribution,
                                     prefix_log_probability, sample_bytes)

ALPHABET = b"ab "
MAX_BYTES = 4  # the toy model's texts: every string over ALPHABET of at most this many bytes


class LongestMatch:
    """Maximum prefix encoding (greedy longest match) over a tiny vocabulary; id 0 is EOS."""
    pieces = (b"", b"a", b"b", b" ", b"ab", b"aa", b"ba", b"aab", b" a")

    def encode(self, data: bytes):
        ids, i = [], 0
        while i < len(data):
            best = max((t for t, p in enumerate(self.pieces) if p and data.startswith(p, i)),
                       key=lambda t: len(self.pieces[t]))
            ids.append(best)
            i += len(self.pieces[best])
        return ids


def subword_tokenizer():
    docs = [b"ab ab aab ba", b"aab aab ab a", b"ba ab aa b"]
    return train_subwords(docs, 266)


class ToyLM:
    """A token LM of a tokenizer's own outputs: text s (any string over ALPHABET, at most
    MAX_BYTES bytes) then encode(s) EOS. Each step picks a token by a fixed random table on the
    previous token, among those that keep the string a prefix of some encode(s) EOS (so invalid
    encodings get probability 0, as the paper assumes)."""

    def __init__(self, tokenizer, eos: int, seed: int):
        self.eos, self.vocab, self.pieces = eos, len(tokenizer.pieces), tokenizer.pieces
        self.prefixes = set()
        for length in range(MAX_BYTES + 1):
            for s in itertools.product(ALPHABET, repeat=length):
                full = tuple(int(i) for i in tokenizer.encode(bytes(s))) + (eos,)
                self.prefixes.update(full[:k] for k in range(len(full) + 1))
        self.table = np.random.default_rng(seed).uniform(0.1, 1.0, (self.vocab + 1,
                                                                    self.vocab))

    def next_log_probs(self, tokens: tuple[int, ...]) -> np.ndarray:
        allowed = np.array([tokens + (u,) in self.prefixes for u in range(self.vocab)])
        w = self.table[tokens[-1] if tokens else self.vocab] * allowed
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(w / w.sum()) if w.sum() else np.full(self.vocab, -np.inf)

    def score(self, sequences):
        log_p, nxt = [], []
        for s in sequences:
            s = tuple(s)
            log_p.append(sum(self.next_log_probs(s[:i])[s[i]] for i in range(len(s))))
            nxt.append(self.next_log_probs(s))
        return np.array(log_p, np.float64), np.stack(nxt)

    def texts(self) -> dict[bytes, float]:
        """Brute force: every text the model emits, with its probability."""
        out, stack = {}, [((), 0.0)]
        while stack:
            tokens, log_p = stack.pop()
            nxt = self.next_log_probs(tokens)
            for u in np.flatnonzero(np.isfinite(nxt)):
                if u == self.eos:
                    text = b"".join(self.pieces[t] for t in tokens)
                    out[text] = out.get(text, 0.0) + np.exp(log_p + nxt[u])
                else:
                    stack.append((tokens + (int(u),), log_p + nxt[u]))
        return out


def brute_force_next_byte(texts: dict[bytes, float], prefix: bytes) -> np.ndarray:
    p = np.zeros(257)
    for text, mass in texts.items():
        if text.startswith(prefix):
            p[text[len(prefix)] if len(text) > len(prefix) else END] += mass
    return p


@pytest.fixture(params=["longest_match", "bpe"])
def toy(request):
    if request.param == "longest_match":
        tokenizer, eos = LongestMatch(), 0
    else:
        tokenizer, eos = subword_tokenizer(), 258
    model = ToyLM(tokenizer, eos, seed=len(request.param))
    return tokenizer, eos, model, model.texts()


def test_next_byte_matches_brute_force(toy):
    tokenizer, eos, model, texts = toy
    assert abs(sum(texts.values()) - 1.0) < 1e-12
    prefixes = {t[:k] for t in texts for k in range(len(t) + 1)}
    for prefix in sorted(prefixes, key=lambda p: (len(p), p))[::3]:
        target = brute_force_next_byte(texts, prefix)
        p = next_byte_distribution(prefix, tokenizer, model.score, eos=eos)
        assert abs(p.sum() - 1.0) < 1e-12
        np.testing.assert_allclose(p, target / target.sum(), rtol=0, atol=1e-12,
                                   err_msg=repr(prefix))
        # the lemma itself, unnormalised: P(prefix) = sum over the cover encodings
        assert abs(np.exp(prefix_log_probability(prefix, tokenizer, model.score))
                   - target.sum()) < 1e-12, prefix


def test_chain_of_exact_bytes_is_the_token_likelihood(toy):
    tokenizer, eos, model, texts = toy
    for text in sorted(texts, key=lambda t: (-len(t), t))[:4]:
        out = byte_log_likelihoods(text, tokenizer, model.score, eos=eos)
        assert abs(out["exact"].sum() - np.log(texts[text])) < 1e-12
        assert abs(out["token"] - np.log(texts[text])) < 1e-12
        for i in range(len(text) + 1):
            naive = naive_next_byte_distribution(text[:i], tokenizer, model.score, eos=eos)
            target = text[i] if i < len(text) else END
            assert abs(naive[target] - np.exp(out["naive"][i])) < 1e-12


def test_tokenization_bias():
    """After the prefix "a" the byte-pair encoding's merge "ab" makes the token "b" invalid:
    the naive estimate gives "b" probability 0, the exact one does not."""
    tokenizer = subword_tokenizer()
    assert tokenizer.encode(b"ab").tolist() != tokenizer.encode(b"a").tolist() + [ord("b")]
    model = ToyLM(tokenizer, 258, seed=1)
    naive = naive_next_byte_distribution(b"a", tokenizer, model.score, eos=258)
    exact = next_byte_distribution(b"a", tokenizer, model.score, eos=258)
    assert naive[ord("b")] == 0.0 and exact[ord("b")] > 0.05
    covers = cover_encodings(b"a", tokenizer)
    assert all(tokenizer.decode(c).startswith(b"a") for c in covers)
    assert (ord("a"),) in covers and any(len(tokenizer.pieces[c[-1]]) > 1 for c in covers)


def test_sampler_draws_the_byte_distribution():
    tokenizer = LongestMatch()
    model = ToyLM(tokenizer, 0, seed=3)
    texts = model.texts()
    rng = np.random.default_rng(0)
    draws = 300
    counts: dict[bytes, int] = {}
    for _ in range(draws):
        text = sample_bytes(rng, b"", tokenizer, model.score, eos=0, max_bytes=MAX_BYTES + 1)
        counts[text] = counts.get(text, 0) + 1
    assert set(counts) <= set(texts)
    for text, p in texts.items():  # every text within 4.5 standard deviations
        assert abs(counts.get(text, 0) / draws - p) < 4.5 * np.sqrt(p * (1 - p) / draws) + 1e-3


def test_bad_input():
    with pytest.raises(TypeError, match="prefix must be bytes"):
        next_byte_distribution("a", LongestMatch(), None, eos=0)
    with pytest.raises(ValueError, match="eos=99"):
        next_byte_distribution(b"a", LongestMatch(), None, eos=99)


def test_lm_scorer_reads_a_jaxlm_model():
    import jax
    from flax import nnx

    from jaxlm.models import ModelConfig, build_lm
    model = build_lm(ModelConfig(vocab_size=7, d_model=8, n_layers=1, d_ff=0), rngs=nnx.Rngs(0))
    score = lm_scorer(model, bos=5, pad=6, batch_size=2)
    sequences = [(), (1, 2), (3,)]
    log_p, next_log_p = score(sequences)
    rows = np.array([(5, *s) + (6,) * (2 - len(s)) for s in sequences])  # causal: pads after
    direct = np.asarray(jax.nn.log_softmax(model(rows), -1), np.float64)
    for s, lp, nxt, d in zip(sequences, log_p, next_log_p, direct):
        assert abs(lp - sum(d[i, t] for i, t in enumerate(s))) < 1e-5
        np.testing.assert_allclose(nxt, d[len(s)], atol=1e-5)

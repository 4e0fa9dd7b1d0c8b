"""Token-free models: lexinvariance, causality and document isolation of the word-level
models, generation, and the bits-per-byte probe."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm.data import (BOS, BYTE_VOCAB, EOS, EOW, IGNORE, DataConfig, TextConfig, encode,
                        make_source)
from jaxlm.layers import AttentionConfig
from jaxlm.models import (LexinvariantConfig, ModelConfig, WordConfig, build_lm,
                          generate_text)
from jaxlm.probes import score_text
from jaxlm.probes.text import evaluate_text
from jaxlm.train.losses import batch_loss

SMALL = ModelConfig(vocab_size=BYTE_VOCAB, d_model=16, n_layers=1, d_ff=32,
                    attention=AttentionConfig(n_heads=2),
                    words=WordConfig(max_word_len=6, d_local=16))


def model(kind, **changes):
    if kind == "mrt5":
        changes.setdefault("n_layers", 2)
    return build_lm(dataclasses.replace(SMALL, kind=kind, **changes), rngs=nnx.Rngs(params=0))


def pointer_model(**changes):
    """The lexinvariant model with the pointer head and n-gram match features of orders 1-3,
    their weights drawn at random (they start at zero) so that the tests see them."""
    m = model("lexinvariant", lexinvariant=LexinvariantConfig(head="pointer", ngram_orders=3),
              **changes)
    weights = m.pointer.match_weights
    weights.kernel[...] = jax.random.normal(jax.random.key(3), weights.kernel.shape, jnp.float32)
    weights.bias[...] = jnp.asarray([1.0, 2.0, 3.0], jnp.float32)
    return m


@jax.jit
def forward(m, tokens, segment_ids=None, tables=None):
    """The model's parallel form, compiled (one compile instead of many eager ops)."""
    if tables is not None:
        return m(tokens, tables=tables)
    return m(tokens, segment_ids=segment_ids)


@pytest.mark.parametrize("table_dim,head", [(0, "tied"), (48, "tied"), (0, "pointer")])
def test_lexinvariant_logits_follow_any_relabelling_of_the_vocabulary(table_dim, head):
    """Relabelling tokens by a permutation pi (and the table with them) permutes the logits:
    logits(pi(x), T o pi^-1)[..., pi(v)] == logits(x, T)[..., v]. The pointer head has its
    n-gram match features on, and the tokens repeat, so matches of every order occur."""
    m = (pointer_model(vocab_size=20) if head == "pointer" else
         model("lexinvariant", vocab_size=20, lexinvariant=LexinvariantConfig(table_dim=table_dim)))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, 3, (2, 11)))
    tables = jax.random.normal(jax.random.key(1), (2, 20, table_dim or 16))
    pi = jnp.asarray(rng.permutation(20))
    relabelled_tables = jnp.zeros_like(tables).at[:, pi].set(tables)
    logits = forward(m, tokens, tables=tables)
    relabelled = forward(m, pi[tokens], tables=relabelled_tables)
    np.testing.assert_allclose(relabelled[..., pi], logits, atol=1e-5)
    with pytest.raises(ValueError, match=r"tables must have shape \[batch, vocab, table_dim\]"):
        m(tokens, tables=tables[:, :10])


def test_lexinvariant_tables_are_fresh_in_training_and_fixed_in_evaluation():
    m = model("lexinvariant")
    tokens = jnp.asarray(encode("abcabcabc"))[None]
    np.testing.assert_array_equal(m(tokens), m(tokens))  # evaluation: deterministic
    m.train()
    first, second = m(tokens), m(tokens)
    assert int(m.draws[...]) == 2 and not np.allclose(first, second)
    semi = model("lexinvariant", lexinvariant=LexinvariantConfig(random_prob=0.5))
    learned = jnp.broadcast_to(semi.learned.embedding[...], (1, BYTE_VOCAB, 16))
    np.testing.assert_allclose(forward(semi, tokens), forward(semi, tokens, tables=learned))
    with pytest.raises(ValueError, match="random_prob"):
        LexinvariantConfig(random_prob=1.5)
    with pytest.raises(ValueError, match=r"head must be one of \('tied', 'pointer'\), got 'copy'"):
        LexinvariantConfig(head="copy")
    with pytest.raises(ValueError, match=r"ngram_orders must be >= 0 and needs head='pointer', "
                                         r"got 2 with head='tied'"):
        LexinvariantConfig(ngram_orders=2)


def test_pointer_head_is_the_in_context_unigram_when_it_points_uniformly():
    """With the pointer's query at zero, every earlier position of the document and the
    sentinel get the same weight: p(v) = (count of v so far + p_vocab(v)) / (t + 2)."""
    m = model("lexinvariant", lexinvariant=LexinvariantConfig(head="pointer"))
    m.pointer.query.kernel[...] = jnp.zeros_like(m.pointer.query.kernel[...])
    first = np.concatenate([[BOS], encode("xyz"), [EOS]])
    second = np.concatenate([[BOS], encode("abca")])
    row = np.concatenate([first, second])
    segments = np.asarray([0] * len(first) + [1] * len(second))
    log_p = forward(m, jnp.asarray(row)[None], jnp.asarray(segments)[None])[0]
    m.pointer = None  # the tied head alone
    p_vocab = jax.nn.softmax(forward(m, jnp.asarray(row)[None], jnp.asarray(segments)[None])[0])
    t = len(first) + 4  # "BOS a b c a" of the second document: 'a' twice, 'b' and 'c' once
    counts = np.zeros(BYTE_VOCAB)
    np.add.at(counts, second, 1)
    np.testing.assert_allclose(np.exp(log_p[t]), (counts + p_vocab[t]) / (len(second) + 1),
                               atol=1e-6)


@pytest.mark.parametrize("head", ["tied", "pointer"])
def test_lexinvariant_step_matches_the_parallel_form(head):
    m = pointer_model() if head == "pointer" else model("lexinvariant")
    tokens = jnp.asarray(encode("the cat sat on the mat"))[None]
    full = forward(m, tokens)
    logits, state = m.prefill(tokens[:, :10], max_length=tokens.shape[1])
    np.testing.assert_allclose(logits, full[:, :10], atol=1e-5)
    for t in range(10, tokens.shape[1]):
        logits, state = m.step(tokens[:, t], state)
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)


TEXT = "the cat sat, on  the mat\nand ran away quickly "


@pytest.mark.parametrize("kind", ["hierarchical", "word_pooled"])
def test_word_models_are_causal(kind):
    """Changing a letter of word k leaves every earlier word's logits alone, and inside word k
    the decoder's predictions up to that letter."""
    m = model(kind)
    tokens = jnp.asarray(encode(TEXT))[None]
    changed = tokens.at[0, 22].set(ord("q"))  # "mat" -> "mqt", word 5
    a, b = forward(m, tokens), forward(m, changed)
    assert (np.asarray(a["targets"][0, :5]) == np.asarray(b["targets"][0, :5])).all()
    np.testing.assert_allclose(a["logits"][0, :5], b["logits"][0, :5], atol=1e-5)
    # positions 0, 1 predict "m", "a"; position 2 reads the changed letter
    np.testing.assert_allclose(a["logits"][0, 5, :2], b["logits"][0, 5, :2], atol=1e-5)
    assert not np.allclose(a["logits"][0, 5, 2], b["logits"][0, 5, 2])
    assert not np.allclose(a["logits"][0, 6:], b["logits"][0, 6:])


def test_word_targets_spell_each_word_then_eow_and_ignore_what_has_no_context():
    m = model("hierarchical", words=dataclasses.replace(SMALL.words, max_words=10))
    tokens = jnp.asarray(np.concatenate([[BOS], encode("ab cd "), [EOS, BOS], encode("ef gh")]))
    segments = jnp.asarray([0] * 8 + [1] * 6)
    targets = np.asarray(forward(m, tokens[None], segments[None])["targets"][0])
    words = [list(row[row != IGNORE]) for row in targets]
    assert words[0] == []  # BOS of the row's first document: nothing before it
    assert words[1] == [ord("a"), ord("b"), ord(" "), EOW]
    assert words[2] == [ord("c"), ord("d"), ord(" "), EOW]
    assert words[3] == [EOS, EOW]
    assert words[4] == []  # BOS of the next document: its context is another document
    assert words[5] == [ord("e"), ord("f"), ord(" "), EOW]
    assert words[6] == [ord("g"), ord("h")]  # the row's last word may go on: no EOW
    assert all(w == [] for w in words[7:])


@pytest.mark.parametrize("kind", ["decoder", "word_pooled", "lexinvariant"])
def test_packed_rows_never_see_another_document(kind):
    """A document's predictions in a packed row equal those of the document alone (the
    lexinvariant model with the pointer head: it must not point into another document)."""
    m = pointer_model() if kind == "lexinvariant" else model(kind)
    first = np.concatenate([[BOS], encode("some old text here "), [EOS]])
    second = np.concatenate([[BOS], encode("the cat sat on the mat")])
    row = jnp.asarray(np.concatenate([first, second]))[None]
    segments = jnp.asarray([0] * len(first) + [1] * len(second))[None]
    packed = forward(m, row, segments)
    alone = forward(m, jnp.asarray(second)[None])
    if kind != "word_pooled":
        np.testing.assert_allclose(packed[0, len(first):], alone[0], atol=1e-5)
    else:
        words = 6  # BOS, "some ", "old ", "text ", "here ", EOS
        np.testing.assert_allclose(packed["logits"][0, words + 1:words + 7],
                                   alone["logits"][0, 1:7], atol=1e-5)
        np.testing.assert_array_equal(packed["targets"][0, words + 1:words + 7],
                                      alone["targets"][0, 1:7])


@pytest.mark.parametrize("kind", ["decoder", "lexinvariant", "hierarchical", "word_pooled",
                                  "mrt5"])
def test_generate_text_returns_the_prompt_and_valid_text(kind):
    out = generate_text(model(kind), "Hello wor", max_new_bytes=8, temperature=1.0,
                        key=jax.random.key(0))
    assert isinstance(out, str) and out.startswith("Hello wor") and len(out) > len("Hello wor")
    out.encode("utf-8")  # replacement characters, never an error
    with pytest.raises(ValueError, match="max_new_bytes must be >= 1"):
        generate_text(model(kind), "Hi", max_new_bytes=0)


def test_generate_text_with_subwords_decodes_the_pieces_the_model_picks():
    """A subword model continues a prompt with whole pieces; the text is the prompt and the
    pieces' bytes, cut at max_new_bytes."""
    from jaxlm.data.text import subwords
    from jaxlm.models import generate
    pieces = subwords("pydoc", 0, 512)
    m = model("decoder", vocab_size=512)
    out = generate_text(m, "def f(x):", max_new_bytes=12, subwords=pieces)
    prompt_ids = np.concatenate([[BOS], pieces.encode(b"def f(x):")])
    picked = generate(m, jnp.asarray(prompt_ids)[None], max_new_tokens=12)[0, len(prompt_ids):]
    picked_bytes = pieces.decode(np.asarray(picked))
    assert len(picked_bytes) > 12  # so the cut at max_new_bytes is exercised
    assert out == "def f(x):" + picked_bytes[:12].decode("utf-8", errors="replace")
    with pytest.raises(ValueError, match="subwords has 512 ids but the model"):
        generate_text(model("decoder"), "Hi", max_new_bytes=4, subwords=pieces)


class Uniform(nnx.Module):
    """Logits 0 everywhere: every counted target costs log2(vocab) bits."""

    def __call__(self, tokens, *, segment_ids=None):
        return jnp.zeros(tokens.shape + (BYTE_VOCAB,))


def test_bits_per_byte_is_code_length_over_bytes():
    data = DataConfig(task="text", text=TextConfig(seq_len=64))
    metrics = score_text(Uniform(), data, num_examples=8, batch_size=4, seed=0)
    batch = jax.device_get(make_source(data).batch(0, 8, "test"))
    counted = batch["targets"] != IGNORE
    expected = math.log2(BYTE_VOCAB) * counted.sum() / (counted & (batch["targets"] < 256)).sum()
    assert metrics["bits_per_byte"] == pytest.approx(expected, rel=1e-6)
    assert metrics["reduction"] == 1.0 and 4 < metrics["unigram"] < 5.5


def mrt5(**changes):
    m = model("mrt5", n_layers=3, **changes)
    m.gate.proj.bias[...] = jnp.array([0.3], jnp.float32)  # G near the threshold: some tokens go
    return m


def test_mrt5_generation_with_a_shorter_cache_matches_hard_deletion():
    m = mrt5()
    tokens = jnp.asarray(encode("the cat sat on the mat, and then it ran away"))[None]
    out = forward(m, tokens)
    rate = float(out["metrics"]["deletion_rate"])
    assert 0.1 < rate < 0.9
    logits, state = m.prefill(tokens, max_length=tokens.shape[1])
    np.testing.assert_allclose(logits, out["logits"], atol=1e-5)
    # the late layers' caches hold only the kept tokens
    assert int(state["kept"][0]) == round((1 - rate) * tokens.shape[1])


def test_mrt5_gate_learns_through_soft_deletion_and_the_controller_sets_alpha():
    m = mrt5()
    m.train()
    tokens = jnp.asarray(encode("the cat sat on the mat"))[None]
    batch = {"inputs": tokens, "targets": jnp.roll(tokens, -1, axis=1)}

    def loss(m):
        return batch_loss(m(batch["inputs"]), batch)[0]

    grads = nnx.jit(nnx.grad(loss))(m)
    assert float(jnp.abs(grads.gate.proj.kernel[...]).sum()) > 0
    m2 = mrt5(deletion=dataclasses.replace(SMALL.deletion, target_rate=0.9, gain=0.1))
    m2.train()
    metrics = m2(tokens)["metrics"]
    rate = float(metrics["deletion_rate"])
    assert float(metrics["deletion_weight"]) == pytest.approx(0.1 * (0.9 - rate), rel=1e-5)
    with pytest.raises(ValueError, match="needs attention in every layer after"):
        dataclasses.replace(SMALL, kind="mrt5", n_layers=2, pattern="attention,mamba2")
    with pytest.raises(ValueError, match="model.attention.window=None"):
        dataclasses.replace(SMALL, kind="mrt5", n_layers=2,
                            attention=AttentionConfig(n_heads=2, window=8))


class UniformSubwords(nnx.Module):
    def __call__(self, tokens, *, segment_ids=None):
        return jnp.zeros(tokens.shape + (512,))


def test_subword_bits_per_byte_count_the_bytes_of_each_piece():
    from jaxlm.data.text import piece_bytes
    data = DataConfig(task="text", text=TextConfig(seq_len=64, subword_vocab=512))
    metrics = evaluate_text(UniformSubwords(), data, num_examples=8, batch_size=4, seed=0)
    targets = jax.device_get(make_source(data).batch(0, 8, "test"))["targets"]
    counted = targets != IGNORE
    nbytes = piece_bytes(data.text)[targets[counted]].sum()
    assert nbytes > 2 * counted.sum()  # pieces average more than two bytes
    assert metrics["bits_per_byte"] == pytest.approx(math.log2(512) * counted.sum() / nbytes,
                                                     rel=1e-6)
    assert "bits_per_byte_cipher" not in metrics  # the cipher is for byte tokens
    assert metrics["reduction"] == pytest.approx(nbytes / counted.sum(), rel=1e-6)
    assert metrics["in_context_unigram"] > 0 and metrics["unigram"] < metrics["bits_per_byte"]


def test_generate_text_in_training_mode_is_evaluation_mode():
    """Training mode (dropout, soft deletion) does not reach generation: MrT5's prefill, a scan
    of its step, would draw dropout masks inside the scan. The text equals the
    evaluation-mode text, and the model stays in training mode."""
    m = build_lm(dataclasses.replace(SMALL, kind="mrt5", dropout=0.1, n_layers=2),
                 rngs=nnx.Rngs(params=0, dropout=1))
    expected = generate_text(m, "Hello wor", max_new_bytes=3)
    m.train()
    assert generate_text(m, "Hello wor", max_new_bytes=3) == expected
    assert any(getattr(x, "deterministic", True) is False for _, x in nnx.iter_graph(m))

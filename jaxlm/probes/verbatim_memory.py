"""Verbatim short-term memory of a language model ("Characterizing Verbatim Short-Term Memory in
Neural Language Models", Armeni, Honey and Linzen).

The paradigm: a vignette in which a list of nouns occurs twice,

    Before the meeting, Mary wrote down the following list of words: N1, N2, ..., Nn.
    <intervening text>  When she got back, she read the list again: M1, M2, ..., Mn.

where the second list is the same list (``"repeat"``), the same nouns in another order
(``"permute"``) or nouns not in the first list (``"control"``). Retrieval is the drop in
surprisal from the first list to the second:

    surprisal(noun)  = -log2 p(noun | everything before it), summed over the noun's tokens
    repeat surprisal = 100 · median_{nouns of list 2} surprisal / median_{nouns of list 1}
                       surprisal   (percent; one value per vignette, averaged over vignettes)

100% means no retrieval (the second list is as surprising as the first); a model that copies
the first list exactly drives it towards 0% on ``"repeat"``. The paper's findings: the
transformers retrieve both the identity and the order of the nouns (low repeat surprisal on
repeated lists, higher on permuted ones, ~100% on controls) at any intervening distance; the
LSTM retrieves less, mainly list-initial nouns, insensitively to order, and only over short
intervening texts.

The noun pool, the vignette's frame and its intervening text ship with this module (no
downloads); the intervening text is cut to ``distance`` words. Any jaxlm LM (a model whose call
returns next-token logits) is scored through :func:`model_surprisal`, any tokenization through
``encode`` (text -> ids: ``jaxlm.data.text.encode`` for byte models, a ``tokenizers.Tokenizer``
for pretrained ones). Segments are encoded one at a time and concatenated, so each noun's tokens
are known exactly (for a subword tokenizer this may differ from encoding the whole vignette at
once by the merges across segment boundaries).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

CONDITIONS = ("repeat", "permute", "control")

NOUNS = (
    "apple", "basket", "bottle", "bridge", "butter", "button", "candle", "carpet", "castle",
    "chair", "cheese", "church", "circle", "clock", "cloud", "coffee", "corner", "cotton",
    "desert", "doctor", "dollar", "dragon", "engine", "farmer", "feather", "finger", "flower",
    "forest", "garden", "glove", "hammer", "harbor", "helmet", "hunter", "island", "jacket",
    "kettle", "kitchen", "ladder", "lemon", "letter", "lizard", "marble", "meadow", "mirror",
    "monkey", "needle", "ocean", "orange", "palace", "pencil", "pepper", "pillow", "planet",
    "pocket", "rabbit", "river", "saddle", "sailor", "silver", "soldier", "spider", "sponge",
    "stone", "sugar", "summer", "table", "teacher", "ticket", "tiger", "tower", "turtle",
    "valley", "violin", "wagon", "window", "winter", "wizard", "basin", "blanket",
)
PREFACE = "Before the meeting, Mary wrote down the following list of words:"
PROMPT = "When she got back, she read the list again:"
INTERVENING = (
    "After the meeting, she took a break and had a cup of coffee. The office was quiet in the "
    "early afternoon, and most of her colleagues had gone out for lunch. She sat by the window "
    "and watched the people in the street below, some hurrying to catch the bus and others "
    "walking slowly in the warm sun. A delivery van stopped at the corner, and two men began "
    "to unload boxes onto the pavement. Across the road, a small shop was putting out its "
    "tables for the evening, and a waiter was wiping each one with a cloth. She thought about "
    "the long week that was still ahead of her and about the report that she had promised to "
    "finish before Friday. There had been many questions at the meeting, and not all of them "
    "had good answers yet. Her manager wanted the numbers checked again, and the new client "
    "had asked for a second version of the plan. She finished her coffee, washed the cup in "
    "the small kitchen at the end of the hall, and talked for a while with a friend who was "
    "waiting for the kettle. They spoke about their weekends, about a film that had just come "
    "out, and about the weather, which had been unusually mild for the time of year. Then her "
    "phone rang, and she walked back along the corridor to answer it at her desk. It was her "
    "sister, who wanted to know whether she would come to dinner on Sunday. She said yes, "
    "wrote the time in her notebook, and put the phone away. The afternoon light was already "
    "changing, and the street outside had become busier as the schools let out. She opened "
    "her bag, took out the folder from the morning, and found the page she had been looking "
    "for."
)

Score = Callable[[np.ndarray], np.ndarray]  # ids [n] -> surprisal in bits [n] (entry 0: nan)


def as_encoder(tokenizer) -> Callable[[str], list[int]]:
    """``encode(text) -> ids`` from a callable or a ``tokenizers.Tokenizer`` (without special
    tokens, so segments concatenate)."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "get_vocab"):
        return lambda text: list(tokenizer.encode(text, add_special_tokens=False).ids)
    if callable(tokenizer):
        return lambda text: [int(i) for i in tokenizer(text)]
    raise TypeError(f"verbatim_memory: encode must be a callable text -> ids or a "
                    f"tokenizers.Tokenizer, got {type(tokenizer).__name__}")


def intervening_text(distance: int) -> str:
    """The first ``distance`` words of the intervening text (1 <= distance <= its length)."""
    words = INTERVENING.split()
    if not 1 <= distance <= len(words):
        raise ValueError(f"verbatim_memory: distance must be in [1, {len(words)}] words, got "
                         f"{distance}")
    return " ".join(words[:distance])


def vignette(encode: Callable[[str], list[int]], first: Sequence[str], second: Sequence[str],
             distance: int) -> tuple[np.ndarray, list[tuple[int, int]], list[tuple[int, int]]]:
    """The ids of one vignette and the [start, end) token spans of the nouns of each list."""
    ids: list[int] = []
    spans: tuple[list, list] = ([], [])

    def add(text: str, which: int | None = None):
        start = len(ids)
        ids.extend(encode(text))
        if which is not None:
            if len(ids) == start:
                raise ValueError(f"verbatim_memory: encode({text!r}) gave no tokens")
            spans[which].append((start, len(ids)))

    for which, (lead, nouns) in enumerate(((PREFACE, first),
                                           (" " + intervening_text(distance) + " " + PROMPT,
                                            second))):
        add(lead)
        for i, noun in enumerate(nouns):
            add(" " + noun, which)
            add("." if i == len(nouns) - 1 else ",")
    return np.asarray(ids, np.int32), spans[0], spans[1]


def lists(rng: np.random.Generator, length: int, condition: str
          ) -> tuple[list[str], list[str]]:
    """(first list, second list) of ``length`` nouns from the pool for ``condition``."""
    if condition not in CONDITIONS:
        raise ValueError(f"verbatim_memory: condition={condition!r}; expected one of "
                         f"{list(CONDITIONS)}")
    if not 1 <= length <= len(NOUNS) // 2:
        raise ValueError(f"verbatim_memory: list length must be in [1, {len(NOUNS) // 2}], got "
                         f"{length}")
    nouns = [str(n) for n in rng.permutation(NOUNS)]
    first = nouns[:length]
    if condition == "repeat":
        return first, list(first)
    if condition == "control":
        return first, nouns[length:2 * length]
    order = rng.permutation(length)
    while length > 1 and (order == np.arange(length)).all():
        order = rng.permutation(length)
    return first, [first[i] for i in order]


def repeat_surprisal(score: Score, encode, *, list_length: int = 10, condition: str = "repeat",
                     distance: int = 13, trials: int = 20, seed: int = 0) -> dict[str, float]:
    """Repeat surprisal (percent; module docstring) over ``trials`` vignettes with fresh lists:
    {"repeat_surprisal": mean over vignettes, "sem": its standard error,
    "first_bits" / "second_bits": mean median noun surprisal of each list}.
    ``score``: ids [n] -> surprisal in bits [n] of each token given those before it
    (:func:`model_surprisal`); ``encode``: text -> ids, or a ``tokenizers.Tokenizer``."""
    encode = as_encoder(encode)
    lists(np.random.default_rng(0), list_length, condition)  # checks both arguments
    rng = np.random.default_rng([seed, list_length, distance, CONDITIONS.index(condition)])
    ratios, first_bits, second_bits = [], [], []
    for _ in range(trials):
        first, second = lists(rng, list_length, condition)
        ids, spans1, spans2 = vignette(encode, first, second, distance)
        bits = np.asarray(score(ids), np.float64)
        s1 = np.median([bits[a:b].sum() for a, b in spans1])
        s2 = np.median([bits[a:b].sum() for a, b in spans2])
        ratios.append(100.0 * s2 / s1)
        first_bits.append(s1)
        second_bits.append(s2)
    ratios = np.asarray(ratios)
    sem = ratios.std(ddof=1) / math.sqrt(len(ratios)) if len(ratios) > 1 else float("nan")
    return {"repeat_surprisal": float(ratios.mean()), "sem": float(sem),
            "first_bits": float(np.mean(first_bits)), "second_bits": float(np.mean(second_bits))}


def verbatim_memory(score: Score, encode, *, list_lengths: Sequence[int] = (3, 5, 10),
                    distances: Sequence[int] = (13, 50, 100),
                    conditions: Sequence[str] = CONDITIONS, trials: int = 20,
                    seed: int = 0) -> list[dict]:
    """The paradigm's grid: one row per (condition, list length, distance) with its
    :func:`repeat_surprisal` (rows carry ``condition``, ``list_length``, ``distance`` in words
    of intervening text, and the metrics)."""
    rows = []
    for condition in conditions:
        for length in list_lengths:
            for distance in distances:
                rows.append({"condition": condition, "list_length": length,
                             "distance": distance,
                             **repeat_surprisal(score, encode, list_length=length,
                                                condition=condition, distance=distance,
                                                trials=trials, seed=seed)})
    return rows


def model_surprisal(model: nnx.Module, *, bucket: int = 64) -> Score:
    """``score(ids)`` for a jaxlm LM: surprisal in bits [n] of each of ``ids`` [n] given the
    ones before it (entry 0 is nan), from one forward pass over the row (padded to a multiple
    of ``bucket`` tokens, so a few lengths compile; the model is causal, so the padding does
    not reach the scored tokens). The model's call must return next-token logits
    [1, n, vocab] (or a dict with "logits" aligned with the inputs)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def bits(state, ids):
        out = nnx.merge(graphdef, state)(ids[None])
        if isinstance(out, dict):
            if "targets" in out:
                raise ValueError("verbatim_memory: the model predicts in its own layout "
                                 "(a word-level model); score it with a custom score function")
            out = out["logits"]
        logp = jax.nn.log_softmax(out[0].astype(jnp.float32))[:-1]
        nats = -jnp.take_along_axis(logp, ids[1:, None], axis=-1)[:, 0]
        return jnp.concatenate([jnp.full((1,), jnp.nan), nats / math.log(2)])

    def score(ids: np.ndarray) -> np.ndarray:
        n = len(ids)
        padded = np.zeros(-(-n // bucket) * bucket, np.int32)
        padded[:n] = ids
        return np.asarray(bits(state, jnp.asarray(padded)))[:n]

    return score


def verbatim_memory_summary(model: nnx.Module, encode, *, list_length: int = 10,
                            distance: int = 13, trials: int = 10, seed: int = 0
                            ) -> dict[str, float]:
    """{"vstm_repeat", "vstm_permute", "vstm_control"}: the repeat surprisal (percent) of each
    condition at one list length and distance (the columns ``jaxlm probe --pretrained``
    adds)."""
    score = model_surprisal(model)
    return {f"vstm_{c}": repeat_surprisal(score, encode, list_length=list_length, condition=c,
                                          distance=distance, trials=trials,
                                          seed=seed)["repeat_surprisal"]
            for c in CONDITIONS}


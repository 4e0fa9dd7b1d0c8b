"""Tokenization bias, measured: next-byte probabilities of a subword LM, read off naively at the
token boundary or exactly by the Byte-Token Representation Lemma ("Exact Byte-Level
Probabilities from Tokenized Language Models for FIM-Tasks and Model Ensembles"), against a
byte LM, in bits per byte on the same held-out bytes.

Run:  python experiments/byte_probs.py [--steps 400] [--docs 12] [--max-bytes 200]
      (CPU: two small LMs are trained first, about 15 of the 20 minutes measured on one
      heavily loaded core; RESULTS.md has the table)

Both LMs are token_free.py's decoder (d_model 64, 2 attention layers): the byte LM on rows of
256 bytes, the subword LM on rows of 80 tokens of the byte-pair encoding of 1024 ids. Each
test document (the built-in corpus's test split, cut to ``--max-bytes``) is scored byte by
byte (not its end, as the documents are cut):

- ``exact``: -log2 P(x_{i+1} | x_1^i) from :func:`jaxlm.probes.byte_probs.next_byte_distribution`
  (the sum over cover encodings, normalised over the 256 bytes and the end);
- ``naive``: encode x_1^i, take the next-token distribution, sum the tokens by their first byte;
- ``token``: the subword LM's own code length of the canonical tokens of the document,
  -log2 P(encode(x)), per byte (what the text probe reports for subword models);
- ``byte LM``: the byte LM's -log2 P(x_{i+1} | x_1^i).

``exact`` can only be below ``token`` (it sums every cover of the prefix, the canonical
encoding among them) and equals it for a model that gives non-canonical encodings
probability 0; ``naive`` shows the bias the paper removes.
"""

import argparse
import dataclasses
import math
import tempfile
import time

import numpy as np

from jaxlm.config import apply_overrides
from jaxlm.data.text import BOS, EOS, PAD, split_documents, subwords
from jaxlm.models.generate import eval_view
from jaxlm.probes.byte_probs import byte_log_likelihoods, lm_scorer
from jaxlm.train import train

import token_free

SUBWORD = {"data.text.subword_vocab": 1024, "model.vocab_size": 1024, "data.text.seq_len": 80}


def trained(overrides: dict, steps: int):
    config = apply_overrides(dataclasses.replace(token_free.config(), name="byte_probs"),
                             {**overrides, "train.steps": steps, "train.log_every": steps})
    with tempfile.TemporaryDirectory() as run_dir:
        result = train(config, run_dir, progress=False)
    return config, eval_view(result.model), result.seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--docs", type=int, default=12)
    parser.add_argument("--max-bytes", type=int, default=200)
    args = parser.parse_args()
    start = time.perf_counter()
    config, subword_lm, subword_s = trained(SUBWORD, args.steps)
    _, byte_lm, byte_s = trained({}, args.steps)
    text = config.data.text
    tokenizer = subwords(text.path, text.max_bytes, text.subword_vocab)
    documents = [d[:args.max_bytes] for d in split_documents(text.path, text.max_bytes)[2]
                 [:args.docs]]
    score = lm_scorer(subword_lm, bos=BOS, pad=PAD)
    byte_score = lm_scorer(byte_lm, bos=BOS, pad=PAD)
    bits = {"exact": 0.0, "naive": 0.0, "token": 0.0, "byte LM": 0.0}
    mid_token = {"exact": 0.0, "naive": 0.0, "count": 0}
    nbytes = 0
    for doc in documents:
        out = byte_log_likelihoods(doc, tokenizer, score, eos=EOS)
        n = len(doc)
        bits["exact"] -= out["exact"][:n].sum() / math.log(2)
        bits["naive"] -= out["naive"][:n].sum() / math.log(2)
        ids = tuple(int(i) for i in tokenizer.encode(doc))
        bits["token"] -= float(score([ids])[0][0]) / math.log(2)
        bits["byte LM"] -= float(byte_score([tuple(doc)])[0][0]) / math.log(2)
        boundaries = np.cumsum([len(tokenizer.pieces[i]) for i in ids])
        inside = np.ones(n, bool)
        inside[0] = False
        inside[boundaries[boundaries < n]] = False  # byte i starts a token of the text
        mid_token["exact"] -= out["exact"][:n][inside].sum() / math.log(2)
        mid_token["naive"] -= out["naive"][:n][inside].sum() / math.log(2)
        mid_token["count"] += int(inside.sum())
        nbytes += n
    print(f"{len(documents)} test documents, {nbytes} bytes ({mid_token['count']} inside a "
          f"token of the text); {args.steps} steps: subword LM {subword_s:.0f} s, byte LM "
          f"{byte_s:.0f} s; total {time.perf_counter() - start:.0f} s\n")
    print("| estimate | bits / byte | bits / byte, bytes inside a token |")
    print("|---|---|---|")
    for name in ("token", "exact", "naive", "byte LM"):
        inside = (f"{mid_token[name] / mid_token['count']:.3f}" if name in mid_token else "")
        print(f"| {name} | {bits[name] / nbytes:.3f} | {inside} |")


if __name__ == "__main__":
    main()

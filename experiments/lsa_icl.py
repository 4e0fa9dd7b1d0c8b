"""The single linear-self-attention layer of "Trained Transformers Learn Linear Models
In-Context" (Zhang, Frei, Bartlett): trained by gradient descent from the paper's
initialisation, its test loss beside the closed-form global minimum, in distribution and under
the paper's shifts (longer test prompts, a task shift, a query shift, a covariate shift).

Run:  python experiments/lsa_icl.py        (CPU, about 2 minutes)
The paper's claims to see: the trained loss lands on the minimum (ratio ~1); the error falls
with the test prompt length M as the formula says; the model is robust to task and query shifts
in the sense that it still computes x_q^T Gamma^-1 (1/M) sum y_i x_i, and a covariate shift
(skewed x at test time) breaks it.
"""

import dataclasses

from jaxlm.probes import LSAConfig, train_lsa
from jaxlm.runner import markdown_table

BASE = LSAConfig(n_dims=5, n_train=20, n_test=20, steps=2000)
CASES = {
    "in distribution (M = N = 20)": {},
    "longer prompts (M = 40)": {"n_test": 40},
    "task shift (w ~ N(1, I))": {"task_shift": 1.0},
    "query shift (x_q scaled x3)": {"query_scale": 3.0},
    "covariate shift (skewed x)": {"test_covariance": "skewed"},
}


def main() -> None:
    rows = []
    for name, change in CASES.items():
        result = train_lsa(dataclasses.replace(BASE, **change))
        rows.append({"test": name, **result})
        print(f"{name}: {result}")
    print()
    print(markdown_table(rows, ["test", "trained_loss", "optimum_loss", "theory_loss",
                                "ratio"]))


if __name__ == "__main__":
    main()

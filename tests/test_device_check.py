"""experiments/device_check.py's whole path at tiny shapes on CPU (--dry-run): cases, guards,
the peers' absence, the JSON and markdown reports. The Mosaic GPU kernels' interpreted runs are
covered by tests/kernels/test_mosaic_gpu.py, so this run times the XLA forms and JAX's own
attention only."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_dry_run_writes_the_table(tmp_path):
    spec = importlib.util.spec_from_file_location("device_check",
                                                  ROOT / "experiments" / "device_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.main(["--dry-run", "--out", str(tmp_path),
                          "--impls", "jaxlm xla", "jax.nn xla", "jax.nn cudnn"])
    saved = json.loads((tmp_path / "device_check.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"], default=str))
    rows = {(r["op"], r["impl"]): r for r in saved["rows"]}
    for op in ("gla per head (ssd)", "gla per channel", "gated delta rule", "attention causal",
               "attention causal, 16 packed documents"):
        row = rows[(op, "jaxlm xla")]
        assert row["passed"] and row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0
        assert {"op", "backend", "device", "dtype", "shape", "impl", "passed"} <= set(row)
    assert rows[("attention causal", "jax.nn xla")]["passed"]
    assert not rows[("attention causal", "jax.nn cudnn")]["passed"]  # no GPU: an error row
    assert "| op | shape | impl |" in (tmp_path / "device_check.md").read_text()

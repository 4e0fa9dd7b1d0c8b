"""Test set-up: 8 simulated CPU devices (set before JAX starts) and float64 enabled, so the
equality tests can compare in float64. Library code is dtype-explicit, so float32 paths still run
in float32 where the tests ask for it."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

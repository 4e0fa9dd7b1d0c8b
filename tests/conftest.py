"""Test set-up: 8 simulated CPU devices (set before JAX starts), fast compilation, and float64
enabled, so the equality tests can compare in float64. Library code is dtype-explicit, so
float32 paths still run in float32 where the tests ask for it."""

import os

# The tests compile many small programs and run each briefly: without LLVM's optimisation
# passes the CPU backend compiles them about twice as fast (the math is the same; tolerances
# are unchanged).
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FAST_COMPILE
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

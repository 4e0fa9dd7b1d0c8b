"""Pallas kernels for jaxlm's hot paths, imported as ``jaxlm.kernels``.

Each kernel lives beside a plain-JAX reference in :mod:`jaxlm.ops` that it must match.
"""

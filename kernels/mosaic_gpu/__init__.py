"""Mosaic GPU kernels for Hopper (H100 / H200), written with ``plgpu.kernel``: TMA copies into
shared-memory rings with barriers, ``wgmma`` on the tensor cores, recurrent state in registers.

* :mod:`~jaxlm.kernels.mosaic_gpu.linear_attention`: chunked gated linear attention with one
  decay per head (SSD / RetNet / lightning attention), forward and backward kernels.
* :mod:`~jaxlm.kernels.mosaic_gpu.gla_per_channel`: the same with one decay per channel (GLA),
  off-diagonal sub-chunk blocks on ``wgmma``, diagonal ones exactly in float32.
* :mod:`~jaxlm.kernels.mosaic_gpu.compat`: the differences between JAX 0.10, 0.11 and 0.12's
  Mosaic GPU APIs and interpreters, in one place.

Every entry point takes ``interpret=True`` to run in Mosaic GPU's interpreter on any backend
(the CPU tests). Not built yet: the gated delta rule, the selective scan, and a split of the
sequence across thread blocks.
"""

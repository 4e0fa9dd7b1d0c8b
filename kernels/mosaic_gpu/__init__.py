"""Mosaic GPU kernels for Hopper (H100 / H200), written with ``plgpu.kernel``: TMA copies into
shared-memory rings with barriers, ``wgmma`` on the tensor cores, recurrent state in registers.

* :mod:`~jaxlm.kernels.mosaic_gpu.linear_attention`: chunked gated linear attention with one
  decay per head (SSD / RetNet / lightning attention), forward and backward kernels.
* :mod:`~jaxlm.kernels.mosaic_gpu.delta_rule`: the chunked (gated) delta rule (DeltaNet,
  Gated DeltaNet): the UT transform of every chunk at once in XLA (blocked 16 x 16 solve on
  the tensor cores), then forward and backward kernels over the chunks, the state in
  registers split into 64-column blocks, one thread block each.
* :mod:`~jaxlm.kernels.mosaic_gpu.compat`: the differences between JAX 0.10, 0.11 and 0.12's
  Mosaic GPU APIs and interpreters, in one place.

Every entry point takes ``interpret=True`` to run in Mosaic GPU's interpreter on any backend
(the CPU tests). Not built yet: per-channel decay (GLA), the selective scan, a Mosaic GPU
kernel for the delta rule's chunk-parallel stage, and a split of the sequence across thread
blocks.
"""

"""Mosaic GPU kernels for Hopper (H100 / H200), written with ``plgpu.kernel``: TMA copies into
shared-memory rings with barriers, ``wgmma`` on the tensor cores, recurrent state in registers.

* :mod:`~jaxlm.kernels.mosaic_gpu.linear_attention`: chunked gated linear attention with one
  decay per head (SSD / RetNet / lightning attention), forward and backward kernels.
* :mod:`~jaxlm.kernels.mosaic_gpu.gla_per_channel`: the same with one decay per channel (GLA),
  off-diagonal sub-chunk blocks on ``wgmma``, diagonal ones exactly in float32.
* :mod:`~jaxlm.kernels.mosaic_gpu.delta_rule`: the chunked (gated) delta rule (DeltaNet,
  Gated DeltaNet): the UT transform of every chunk at once in XLA (blocked 16 x 16 solve on
  the tensor cores), then forward and backward kernels over the chunks, the state in
  registers split into 64-column blocks, one thread block each.
* :mod:`~jaxlm.kernels.mosaic_gpu.selective_scan`: Mamba's selective scan, 64 channels per
  thread block with the state in registers, chunks of u, Δ, B, C through a TMA ring and the
  positions stepped in order (no ``wgmma``: A is diagonal); the backward recomputes each
  chunk's states from saved chunk-start states.
* :mod:`~jaxlm.kernels.mosaic_gpu.flash_attention`: block-sparse flash attention (causal or
  not, packed rows, GQA), forward kernel only: per query block of 64 a fetch table of the
  allowed key blocks (made in XLA) drives a TMA ring of K and V, so masked blocks are never
  read; ``wgmma`` for Q Kᵀ and P V, online softmax in float32 registers. Its backward
  recomputes in XLA one query block at a time (exact, dense work).
* :mod:`~jaxlm.kernels.mosaic_gpu.compat`: the differences between JAX 0.10, 0.11 and 0.12's
  Mosaic GPU APIs and interpreters, in one place.

Every entry point takes ``interpret=True`` to run in Mosaic GPU's interpreter on any backend
(the CPU tests). Rows too few to fill the GPU are cut into pieces that run as separate thread
blocks by :mod:`jaxlm.kernels.split`, around the attention-like kernels. Not built yet: a
Mosaic GPU kernel for the delta rule's chunk-parallel stage, a sequence split for the
selective scan, and a backward kernel for flash attention.
"""

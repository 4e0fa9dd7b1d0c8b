"""Pallas kernels for jaxlm's hot paths, imported as ``jaxlm.kernels``.

Each kernel lives beside a plain-JAX reference in :mod:`jaxlm.ops` that it must match, and the
ops reach it with ``impl="pallas"`` (``"pallas_interpret"``: Pallas' interpreter, any backend):

* :mod:`~jaxlm.kernels.flash_attention`: flash attention with causal, window, packed and
  block-sparse masks; backward as two kernels.
* :mod:`~jaxlm.kernels.chunked`: the driver every chunkwise recurrence shares (state on chip,
  chunk-start states saved, a reverse-walking backward kernel), with
  :mod:`~jaxlm.kernels.linear_attention` (GLA / SSD), :mod:`~jaxlm.kernels.delta_rule` and
  :mod:`~jaxlm.kernels.selective_scan` on it.
* :mod:`~jaxlm.kernels.backend`: which lowering runs (Mosaic TPU, Triton on GPU, interpreter).
* :mod:`~jaxlm.kernels.mosaic_gpu`: hand-placed Mosaic GPU kernels for Hopper (``plgpu.kernel``,
  TMA, ``wgmma``): compiled GPU calls of GLA / SSD, the gated delta rule and the selective
  scan go to them where they take the shapes (``impl="pallas"``, or ``"auto"`` once a device measurement earns it).
* :mod:`~jaxlm.kernels.split`: a row cut into pieces that run as separate programs (thread
  blocks), joined by LASP-2's fold, when batch x heads is too small to fill the GPU.

Every entry point takes ``interpret=`` and ``platform=`` (the backend to lower for, default
JAX's default backend) and threads them down. Submodules are imported on use, so importing
jaxlm does not import Pallas.
"""

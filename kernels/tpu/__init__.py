"""TPU (Mosaic) kernels: grids pipelined along the sequence, so on-chip memory does not grow
with the length."""

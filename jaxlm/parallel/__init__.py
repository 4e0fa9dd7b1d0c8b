"""Scale-out: device meshes from config and sequence parallelism over ``jax.shard_map``."""

from jaxlm.parallel.hosts import (DistributedConfig, initialize_distributed, local_rows,
                                  place_batch)
from jaxlm.parallel.mesh import (AXES, MeshConfig, batch_sharding, fsdp_spec, make_mesh,
                                 place_state, under_mesh)
from jaxlm.parallel.ring import ring_attention
from jaxlm.parallel.sequence import (prefix_states, sequence_parallel_delta_rule,
                                     sequence_parallel_gla, sequence_parallel_selective_scan,
                                     sequence_parallel_ssd)
from jaxlm.parallel.ulysses import ulysses_attention
from jaxlm.parallel.dispatch import sequence_mesh

__all__ = ["AXES", "DistributedConfig", "MeshConfig", "initialize_distributed", "local_rows", "batch_sharding", "fsdp_spec", "make_mesh", "place_batch",
           "place_state", "prefix_states", "ring_attention", "sequence_mesh",
           "sequence_parallel_delta_rule", "sequence_parallel_gla",
           "sequence_parallel_selective_scan", "sequence_parallel_ssd", "ulysses_attention",
           "under_mesh"]

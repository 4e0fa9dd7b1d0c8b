"""Scale-out: device meshes from config and sequence parallelism over ``jax.shard_map``."""

from jaxlm.parallel.mesh import (AXES, MeshConfig, batch_sharding, fsdp_spec, make_mesh,
                                 place_batch, place_state)
from jaxlm.parallel.ring import ring_attention
from jaxlm.parallel.sequence import (prefix_states, sequence_parallel_delta_rule,
                                     sequence_parallel_gla, sequence_parallel_selective_scan,
                                     sequence_parallel_ssd)

__all__ = ["AXES", "MeshConfig", "batch_sharding", "fsdp_spec", "make_mesh", "place_batch",
           "place_state", "prefix_states", "ring_attention",
           "sequence_parallel_delta_rule", "sequence_parallel_gla",
           "sequence_parallel_selective_scan", "sequence_parallel_ssd"]

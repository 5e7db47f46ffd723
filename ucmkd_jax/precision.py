"""Dtype policy: compute may run in bfloat16, losses and features are reduced in at least
float32 (float64 stays float64, so that float64 gradient checks are meaningful)."""
import jax.numpy as jnp

__all__ = ["at_least_f32"]


def at_least_f32(x):
    """``x`` cast up to float32 if it is a lower-precision float; float32/float64 unchanged."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))

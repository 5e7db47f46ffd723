"""Step benchmarks (issue 4): ``step_bench`` (compiled JAX steps) and ``torch_reference`` (the
authors' eager PyTorch step, the yardstick). Scripts, not part of the ``ucmkd_jax`` package."""

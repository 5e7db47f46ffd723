"""ucmkd_jax: compiled cross-modal knowledge distillation without paired data (UCMKD, ICML 2026).

``ucmkd_jax.distill`` (see ``ucmkd_jax.api``) is the one-call Python API; it is imported on first
use, so that ``import ucmkd_jax.data`` stays free of JAX.
"""
__version__ = "0.1.0"
__all__ = ["distill", "Distilled", "Trained"]


def __getattr__(name):
    if name in __all__:
        from ucmkd_jax import api

        return getattr(api, name)
    raise AttributeError(f"module 'ucmkd_jax' has no attribute {name!r}")

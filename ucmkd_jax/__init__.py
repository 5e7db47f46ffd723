"""ucmkd_jax: compiled cross-modal knowledge distillation without paired data (UCMKD, ICML 2026)."""
__version__ = "0.1.0"

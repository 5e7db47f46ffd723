"""The published baselines of Table 2 / Table 11 and one config that carries their options.

``BaselineConfig`` is a ``MethodConfig`` with one field per baseline; pass it wherever a
``MethodConfig`` goes (``fit(method_config=...)``, ``ExperimentConfig(method=...)``), e.g.

    BaselineConfig(dkd=DKDConfig(warmup_steps=20 * steps_per_epoch), fitnet=FitNetConfig(stage=3))

A plain ``MethodConfig`` gives every baseline its defaults (each module's docstring lists them and
where they come from). Methods: ``dkd``, ``rkd``, ``rld``, ``fitnet``, ``c2kd`` (paired only),
``reviewkd``, ``norm`` (paired, or unpaired with independently drawn teacher batches).
"""
from __future__ import annotations

import dataclasses

from ucmkd_jax.methods.base import MethodConfig
from ucmkd_jax.methods.c2kd import C2KDConfig
from ucmkd_jax.methods.dkd import DKDConfig
from ucmkd_jax.methods.fitnet import FitNetConfig
from ucmkd_jax.methods.norm import NORMConfig
from ucmkd_jax.methods.reviewkd import ReviewKDConfig
from ucmkd_jax.methods.rkd import RKDConfig
from ucmkd_jax.methods.rld import RLDConfig

__all__ = ["BaselineConfig", "BASELINES", "C2KDConfig", "DKDConfig", "FitNetConfig", "NORMConfig",
           "ReviewKDConfig", "RKDConfig", "RLDConfig"]

BASELINES = ("c2kd", "dkd", "fitnet", "norm", "reviewkd", "rkd", "rld")


@dataclasses.dataclass(frozen=True)
class BaselineConfig(MethodConfig):
    """``MethodConfig`` plus the options of each published baseline (read by the method of the
    same name; frozen and hashable, so compiled steps are cached per setting)."""

    c2kd: C2KDConfig = C2KDConfig()
    dkd: DKDConfig = DKDConfig()
    fitnet: FitNetConfig = FitNetConfig()
    norm: NORMConfig = NORMConfig()
    reviewkd: ReviewKDConfig = ReviewKDConfig()
    rkd: RKDConfig = RKDConfig()
    rld: RLDConfig = RLDConfig()

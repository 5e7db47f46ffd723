"""Distillation methods, one module each, looked up by name in ``METHODS``."""
from ucmkd_jax.methods import ce, feature_kd, ucmkd, vanilla_kd  # noqa: F401  (registration)
from ucmkd_jax.methods import c2kd, dkd, fitnet, norm, reviewkd, rkd, rld  # noqa: F401  (registration)
from ucmkd_jax.methods.base import (METHODS, MethodConfig, MethodSpec, TrainState, create_train_state,
                                    get_method, make_train_step, register, teacher_features)
from ucmkd_jax.methods.baselines import BaselineConfig
from ucmkd_jax.methods.ucmkd import build_ucmkd, ucmkd_outer_loss

__all__ = ["METHODS", "MethodConfig", "MethodSpec", "TrainState", "create_train_state", "get_method",
           "make_train_step", "register", "teacher_features", "build_ucmkd", "ucmkd_outer_loss",
           "BaselineConfig"]

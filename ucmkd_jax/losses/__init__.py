"""Losses: feature alignment (entropic OT), label alignment (kappa-gated), CE and Hinton KD."""
from ucmkd_jax.losses.classification import accuracy_count, cross_entropy, hinton_kd
from ucmkd_jax.losses.feature_alignment import COSTS, FAConfig, cost_matrix, feature_alignment
from ucmkd_jax.losses.label_alignment import label_alignment, label_transport_kernel

__all__ = ["accuracy_count", "cross_entropy", "hinton_kd", "COSTS", "FAConfig", "cost_matrix",
           "feature_alignment", "label_alignment", "label_transport_kernel"]

"""Backbones: ResNet-18/34/50 and MLP encoders, wrapped as encoder + linear head."""
from ucmkd_jax.models.model import BACKBONES, MODALITIES, MLPEncoder, Model, build_model
from ucmkd_jax.models.resnet import STAGES, ResNetEncoder

__all__ = ["BACKBONES", "MODALITIES", "MLPEncoder", "Model", "build_model", "STAGES", "ResNetEncoder"]

"""Classifiers of one modality (encoder + linear head) and the backbones they are built from."""
from ucmkd_jax.models.build import (BACKBONES, DEFAULT_LATENT_DIM, DTYPES, BackboneSpec, build_model, default_backbone,
                                    describe_model, register_backbone)
from ucmkd_jax.models.mlp import MLPEncoder
from ucmkd_jax.models.model import MODALITIES, Model
from ucmkd_jax.models.projection import ProjectedEncoder
from ucmkd_jax.models.resnet import STAGES, ResNetEncoder
from ucmkd_jax.models.torch_resnet import load_torch_resnet, torch_resnet_layout, torch_resnet_variables
from ucmkd_jax.models.vit import VIT_SIZES, ViTEncoder

__all__ = ["BACKBONES", "BackboneSpec", "DEFAULT_LATENT_DIM", "DTYPES", "MODALITIES", "MLPEncoder", "Model",
           "ProjectedEncoder", "ResNetEncoder", "STAGES", "build_model", "default_backbone", "describe_model",
           "register_backbone", "VIT_SIZES", "ViTEncoder", "load_torch_resnet", "torch_resnet_layout",
           "torch_resnet_variables"]

"""Flax Linen models: torchvision-compatible ResNet encoders and the encoder + head classifier."""

from wbcdg_jax.models.classifier import HEAD_KINDS, IMPLEMENTATION_FIELDS, Classifier, Head
from wbcdg_jax.models.resnet import BN_MODES, MAX_POOLS, STAGE_SIZES, ResNetEncoder, feature_dim

__all__ = ["BN_MODES", "HEAD_KINDS", "IMPLEMENTATION_FIELDS", "MAX_POOLS", "STAGE_SIZES", "Classifier", "Head",
           "ResNetEncoder", "feature_dim"]

"""PyTorch siblings of the fastmlp models: an MLP, custom BatchNorm layers and a VGG-style ConvNet.

The trainers (``torch_models.train_mlp``, ``torch_models.train_convnet``) are not
imported here, so importing the models stays cheap.
"""
from torch_models.batchnorm import (
    CustomBatchNormAutograd,
    CustomBatchNormManualFunction,
    CustomBatchNormManualModule,
)
from torch_models.convnet import ConvNet
from torch_models.mlp import MLP

__all__ = [
    "ConvNet",
    "CustomBatchNormAutograd",
    "CustomBatchNormManualFunction",
    "CustomBatchNormManualModule",
    "MLP",
]

"""PyTorch multi-layer perceptron for flattened images (the course's PyTorch MLP)."""
from __future__ import annotations

import numbers

import torch
from torch import nn

from torch_models.batchnorm import CustomBatchNormManualModule

__all__ = ["MLP", "BATCHNORM_CHOICES"]

#: Accepted values of ``MLP(batchnorm=...)`` and the layer each one inserts.
BATCHNORM_CHOICES = {
    None: None,
    "torch": nn.BatchNorm1d,
    "custom": CustomBatchNormManualModule,
}


def _is_positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


class MLP(nn.Module):
    """Fully connected network: ``[BatchNorm] -> Linear -> ReLU -> [Dropout]`` per hidden
    layer, then a Linear output layer returning logits.

    Parameters
    ----------
    n_inputs : int
        Number of input features (3072 for flattened CIFAR-10).
    n_hidden : list or tuple of int
        Units of each hidden layer; empty means multinomial logistic regression
        (a single Linear layer).
    n_classes : int
        Number of output logits.
    dropout : float, keyword-only
        Dropout probability after each hidden ReLU, in [0, 1); 0 inserts no layer.
    batchnorm : {None, 'torch', 'custom'}, keyword-only
        Normalisation inserted before each hidden Linear layer (on its input
        features): ``'torch'`` uses ``nn.BatchNorm1d``, ``'custom'`` uses
        :class:`torch_models.batchnorm.CustomBatchNormManualModule`.

    Attributes
    ----------
    layers : nn.Sequential
        All layers in order. Weights use PyTorch's default initialisation.
    n_inputs, n_hidden, n_classes, dropout, batchnorm
        The constructor arguments (``n_hidden`` as a list).

    Raises
    ------
    TypeError, ValueError
        For an argument of the wrong type or out of range.
    """

    def __init__(self, n_inputs: int, n_hidden, n_classes: int, *, dropout: float = 0.0,
                 batchnorm: str | None = None):
        super().__init__()
        if not _is_positive_int(n_inputs):
            raise ValueError(f"n_inputs must be a positive int, got {n_inputs!r}")
        if not _is_positive_int(n_classes):
            raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")
        if not isinstance(n_hidden, (list, tuple)):
            raise TypeError(f"n_hidden must be a list or tuple of positive ints, "
                            f"got {type(n_hidden).__name__}")
        bad_units = [units for units in n_hidden if not _is_positive_int(units)]
        if bad_units:
            raise ValueError(f"n_hidden must contain only positive ints, got {list(n_hidden)!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real):
            raise TypeError(f"dropout must be a float in [0, 1), got {type(dropout).__name__}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if not (batchnorm is None or (isinstance(batchnorm, str) and batchnorm in BATCHNORM_CHOICES)):
            raise ValueError(f"batchnorm must be one of None, 'torch', 'custom', got {batchnorm!r}")

        self.n_inputs = int(n_inputs)
        self.n_hidden = [int(units) for units in n_hidden]
        self.n_classes = int(n_classes)
        self.dropout = float(dropout)
        self.batchnorm = batchnorm

        norm_layer = BATCHNORM_CHOICES[batchnorm]
        layers: list[nn.Module] = []
        in_features = self.n_inputs
        for units in self.n_hidden:
            if norm_layer is not None:
                layers.append(norm_layer(in_features))
            layers.append(nn.Linear(in_features, units))
            layers.append(nn.ReLU())
            if self.dropout > 0:
                layers.append(nn.Dropout(self.dropout))
            in_features = units
        layers.append(nn.Linear(in_features, self.n_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute class logits.

        Parameters
        ----------
        x : torch.Tensor, shape (batch, n_inputs) or (batch, C, H, W) with C*H*W == n_inputs
            Floating-point input; 4D input is flattened (a view where possible, x is
            not modified).

        Returns
        -------
        logits : torch.Tensor, shape (batch, n_classes)
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        flat = x.flatten(start_dim=1) if x.ndim == 4 else x
        if flat.ndim != 2 or flat.shape[1] != self.n_inputs:
            raise ValueError(f"x must have shape (batch, {self.n_inputs}) or (batch, C, H, W) "
                             f"with C*H*W = {self.n_inputs}, got {tuple(x.shape)}")
        return self.layers(flat)

"""Tests of the torch_models MLP and ConvNet: layer structure, shapes and argument checks."""
import pytest
import torch
from torch import nn

from torch_models.batchnorm import CustomBatchNormManualModule
from torch_models.convnet import ConvNet
from torch_models.mlp import MLP

pytestmark = pytest.mark.usefixtures("torch_single_thread")




# ------------------------------------------------------------------------------ MLP


def _describe(layer):
    """A comparable summary of one layer."""
    if isinstance(layer, nn.Linear):
        return ("Linear", layer.in_features, layer.out_features)
    if isinstance(layer, nn.BatchNorm1d):
        return ("torch_bn", layer.num_features)
    if isinstance(layer, CustomBatchNormManualModule):
        return ("custom_bn", layer.n_neurons)
    if isinstance(layer, nn.Dropout):
        return ("Dropout", layer.p)
    return (type(layer).__name__,)


# n_inputs=12, n_hidden=[8, 4], n_classes=3 written out by hand for each option.
EXPECTED_MLP_LAYERS = {
    (None, 0.0): [("Linear", 12, 8), ("ReLU",), ("Linear", 8, 4), ("ReLU",), ("Linear", 4, 3)],
    (None, 0.5): [("Linear", 12, 8), ("ReLU",), ("Dropout", 0.5),
                  ("Linear", 8, 4), ("ReLU",), ("Dropout", 0.5), ("Linear", 4, 3)],
    ("torch", 0.0): [("torch_bn", 12), ("Linear", 12, 8), ("ReLU",),
                     ("torch_bn", 8), ("Linear", 8, 4), ("ReLU",), ("Linear", 4, 3)],
    ("custom", 0.0): [("custom_bn", 12), ("Linear", 12, 8), ("ReLU",),
                      ("custom_bn", 8), ("Linear", 8, 4), ("ReLU",), ("Linear", 4, 3)],
    ("custom", 0.25): [("custom_bn", 12), ("Linear", 12, 8), ("ReLU",), ("Dropout", 0.25),
                       ("custom_bn", 8), ("Linear", 8, 4), ("ReLU",), ("Dropout", 0.25),
                       ("Linear", 4, 3)],
}


@pytest.mark.parametrize("batchnorm, dropout", list(EXPECTED_MLP_LAYERS), ids=str)
def test_mlp_layer_structure(batchnorm, dropout):
    model = MLP(12, [8, 4], 3, dropout=dropout, batchnorm=batchnorm)
    assert [_describe(layer) for layer in model.layers] == EXPECTED_MLP_LAYERS[batchnorm, dropout]
    assert (model.n_inputs, model.n_hidden, model.n_classes) == (12, [8, 4], 3)


def test_mlp_without_hidden_layers_is_one_linear_layer():
    model = MLP(12, [], 3, dropout=0.5, batchnorm="torch")
    assert [_describe(layer) for layer in model.layers] == [("Linear", 12, 3)]


@pytest.mark.parametrize("batchnorm", [None, "torch", "custom"])
def test_mlp_output_shape_and_4d_flattening(batchnorm):
    torch.manual_seed(0)
    model = MLP(3 * 4 * 4, (10, 6), 5, dropout=0.3, batchnorm=batchnorm)
    images = torch.randn(7, 3, 4, 4)
    logits = model(images)
    assert logits.shape == (7, 5)
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()  # deterministic: 4D input must give the same logits as the flattened batch
    assert torch.equal(model(images), model(images.reshape(7, -1)))


def test_mlp_custom_batchnorm_matches_torch_batchnorm():
    # BatchNorm init consumes no random numbers, so equal seeds give equal Linear weights.
    torch.manual_seed(1)
    with_torch_bn = MLP(20, [16, 8], 4, batchnorm="torch")
    torch.manual_seed(1)
    with_custom_bn = MLP(20, [16, 8], 4, batchnorm="custom")
    x = torch.randn(32, 20) * 3 + 1
    torch.testing.assert_close(with_custom_bn(x), with_torch_bn(x), rtol=1e-4, atol=1e-5)
    with_torch_bn.eval()
    with_custom_bn.eval()
    torch.testing.assert_close(with_custom_bn(x), with_torch_bn(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_hidden=5), TypeError, "n_hidden"),
    (dict(n_hidden="10"), TypeError, "n_hidden"),
    (dict(n_hidden=[10, 0]), ValueError, "n_hidden"),
    (dict(n_hidden=[10, 2.5]), ValueError, "n_hidden"),
    (dict(n_hidden=[True]), ValueError, "n_hidden"),
    (dict(n_inputs=0), ValueError, "n_inputs"),
    (dict(n_classes=-1), ValueError, "n_classes"),
    (dict(dropout=1.0), ValueError, "dropout"),
    (dict(dropout=-0.1), ValueError, "dropout"),
    (dict(dropout="0.5"), TypeError, "dropout"),
    (dict(batchnorm="batch"), ValueError, "batchnorm"),
    (dict(batchnorm=True), ValueError, "batchnorm"),
], ids=str)
def test_mlp_rejects_bad_arguments(kwargs, error, match):
    arguments = dict(n_inputs=12, n_hidden=[8], n_classes=3) | kwargs
    n_inputs, n_hidden, n_classes = (arguments.pop(key) for key in ("n_inputs", "n_hidden", "n_classes"))
    with pytest.raises(error, match=match):
        MLP(n_inputs, n_hidden, n_classes, **arguments)


@pytest.mark.parametrize("shape", [(5, 11), (5,), (5, 3, 2, 3), (5, 2, 6)], ids=str)
def test_mlp_rejects_bad_input_shape(shape):
    model = MLP(12, [8], 3)
    with pytest.raises(ValueError, match=r"\(batch, 12\)") as info:
        model(torch.randn(*shape))
    assert f"got {tuple(shape)}" in str(info.value)


# --------------------------------------------------------------------------- ConvNet

# The course's table, written out independently of torch_models.convnet.CONVNET_CFG.
COURSE_TABLE = ["conv64", "pool", "conv128", "pool", "conv256", "conv256", "pool",
                "conv512", "conv512", "pool", "conv512", "conv512", "pool"]


@pytest.fixture(scope="module")
def convnet():
    torch.manual_seed(0)
    return ConvNet(3, 10)


def test_convnet_layer_structure(convnet):
    layers = list(convnet.features)
    seen = []
    in_channels = 3
    index = 0
    while index < len(layers):
        layer = layers[index]
        if isinstance(layer, nn.MaxPool2d):
            assert (layer.kernel_size, layer.stride, layer.padding) == (3, 2, 1)
            seen.append("pool")
            index += 1
            continue
        assert isinstance(layer, nn.Conv2d), f"unexpected layer {layer}"
        assert layer.in_channels == in_channels
        assert layer.kernel_size == (3, 3)
        assert layer.stride == (1, 1)
        assert layer.padding == (1, 1)
        norm, activation = layers[index + 1], layers[index + 2]
        assert isinstance(norm, nn.BatchNorm2d) and norm.num_features == layer.out_channels
        assert isinstance(activation, nn.ReLU)
        seen.append(f"conv{layer.out_channels}")
        in_channels = layer.out_channels
        index += 3
    assert seen == COURSE_TABLE
    assert isinstance(convnet.classifier, nn.Linear)
    assert (convnet.classifier.in_features, convnet.classifier.out_features) == (512, 10)
    assert sum(isinstance(m, nn.Conv2d) for m in convnet.modules()) == 8
    assert sum(isinstance(m, nn.MaxPool2d) for m in convnet.modules()) == 5


def test_convnet_parameter_count_follows_the_table(convnet):
    expected = 0
    in_channels = 3
    for entry in COURSE_TABLE:
        if entry.startswith("conv"):
            out_channels = int(entry[len("conv"):])
            expected += in_channels * out_channels * 3 * 3 + out_channels  # conv weight + bias
            expected += 2 * out_channels  # BatchNorm2d gamma + beta
            in_channels = out_channels
    expected += in_channels * 10 + 10  # final linear layer
    assert sum(p.numel() for p in convnet.parameters()) == expected


def test_convnet_forward_and_backward(convnet):
    torch.manual_seed(1)
    convnet.zero_grad()
    images = torch.randn(2, 3, 32, 32)
    logits = convnet(images)
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    loss = nn.functional.cross_entropy(logits, torch.tensor([3, 7]))
    loss.backward()
    for name, param in convnet.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_convnet_other_channel_count():
    model = ConvNet(1, 4)
    assert model.features[0].in_channels == 1
    assert model.classifier.out_features == 4


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 32, 32), (3, 32, 32), (2, 3, 32, 16)],
                         ids=str)
def test_convnet_rejects_bad_input_shape(convnet, shape):
    with pytest.raises(ValueError, match=r"\(batch, 3, 32, 32\)") as info:
        convnet(torch.randn(*shape))
    assert str(tuple(shape)) in str(info.value)


@pytest.mark.parametrize("args, match", [((0, 10), "n_channels"), ((3, 0), "n_classes"),
                                         ((3.0, 10), "n_channels")], ids=str)
def test_convnet_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        ConvNet(*args)

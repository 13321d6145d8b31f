"""Conv operator norms vs the SVD of the explicit dense operator; BatchNorm folding vs the original function."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomopt.measures import MeasureError, fold_batchnorm, spectral_norm, weighted_layers


def dense_conv_matrix(conv: nn.Module, shape):
    """Reference: the conv applied to every standard basis vector, one at a time (no geomopt)."""
    n = 1
    for s in shape:
        n *= s
    cols = []
    fn = F.conv2d if isinstance(conv, nn.Conv2d) else F.conv1d
    for i in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[i] = 1
        cols.append(fn(e.reshape(1, *shape), conv.weight.double(), None, conv.stride, conv.padding,
                       conv.dilation, conv.groups).reshape(-1))
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("conv,shape", [
    (nn.Conv2d(2, 3, 3, padding=1), (2, 5, 5)),
    (nn.Conv2d(2, 4, 3, stride=2, padding=1), (2, 6, 6)),
    (nn.Conv2d(3, 2, 2, padding=0), (3, 4, 5)),
    (nn.Conv1d(2, 3, 5, padding=2), (2, 9)),
])
@pytest.mark.parametrize("method", ["power", "dense"])
def test_conv_spectral_norm_equals_dense_operator_svd(conv, shape, method):
    torch.manual_seed(0)
    conv = conv.double()
    ref = torch.linalg.svdvals(dense_conv_matrix(conv, shape))[0].item()
    got = spectral_norm(conv, shape, method=method, iters=5000, tol=1e-12)
    assert got == pytest.approx(ref, rel=1e-5)


def test_conv_spectral_norm_is_not_the_reshaped_kernel_svd():
    """Pitfall: sigma_max of the kernel reshaped to (C_out, C_in k^2) is a different number."""
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    shape = (3, 6, 6)
    ref = torch.linalg.svdvals(dense_conv_matrix(conv, shape))[0].item()
    reshaped = torch.linalg.svdvals(conv.weight.reshape(4, -1))[0].item()
    assert abs(reshaped - ref) > 0.05 * ref
    assert spectral_norm(conv, shape) == pytest.approx(ref, rel=1e-6)


def test_linear_spectral_norm():
    lin = nn.Linear(5, 7).double()
    assert spectral_norm(lin, (5,)) == pytest.approx(torch.linalg.svdvals(lin.weight)[0].item(), rel=1e-12)


class OutOfOrder(nn.Module):
    """Children registered in a different order from the forward pass; conv without bias."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4 * 3 * 3, 3)
        self.bn2 = nn.BatchNorm1d(3)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv(x))))
        return self.bn2(self.head(x.flatten(1)))


def _randomize_bn(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))


def test_batchnorm_folding_preserves_the_function():
    torch.manual_seed(0)
    model = OutOfOrder().double()
    _randomize_bn(model)
    model.eval()
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), rtol=1e-10, atol=1e-10)
    assert model.conv.bias is None  # the original is untouched
    names = [layer.name for layer in weighted_layers(folded, x)]
    assert names == ["conv", "head"]  # forward order, not registration order


def test_batchnorm_after_relu_cannot_be_folded():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    with pytest.raises(MeasureError, match="BatchNorm '2' cannot be folded"):
        fold_batchnorm(model)


def test_compute_folds_batchnorm_like_a_hand_folded_network():
    """Reference: the same network with BN folded by hand (W' = a W, b' = a (b - mean) + beta)."""
    from torch.utils.data import DataLoader, TensorDataset

    from geomopt.measures import compute
    torch.manual_seed(0)
    bn_net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    _randomize_bn(bn_net)
    bn_net.eval()
    lin, bn = bn_net[0], bn_net[1]
    a = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    hand = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        hand[0].weight.copy_(a[:, None] * lin.weight)
        hand[0].bias.copy_(a * (lin.bias - bn.running_mean) + bn.bias)
        hand[2].load_state_dict(bn_net[3].state_dict())
    x = torch.randn(20, 4, dtype=torch.float64)
    loader = DataLoader(TensorDataset(x, torch.randint(3, (20,))), batch_size=10)
    got = compute(bn_net, loader, measures=["norms", "path"])
    ref = compute(hand, loader, measures=["norms", "path"])
    for key in ("l1_path", "l2_path", "frobenius_product", "spectral_product"):
        assert got[key] == pytest.approx(ref[key], rel=1e-10), key

"""Node rescaling leaves the function and the path norm unchanged (Neyshabur et al. 2015).

References: relu(c z) = c relu(z) for c > 0, so the network outputs on random inputs before
the rescaling are the reference for the outputs after it; the path norm before is the
reference for the path norm after; and |w_e|^p gamma_e (the sum over the paths through e of
their full product) is invariant edge by edge.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from geomopt.geometry import path_norm, path_scales, random_node_rescaling, rescale_unit, weighted_layers
from geomopt.nn import CNN, MLP

DTYPE = torch.float64




def _models() -> dict[str, nn.Module]:
    # init="torch" draws nonzero biases, so the bias part of the rescaling is exercised.
    return {
        "mlp": MLP((1, 4, 4), (6, 5, 4), 3, init="torch", seed=1),
        "cnn2d_max": CNN((1, 8, 8), (2, 3), 3, hidden=(4,), pool="max", init="torch", seed=2),
        "cnn2d_avg": CNN((1, 8, 8), (2, 3), 3, hidden=(4,), pool="avg", init="torch", seed=3),
        "cnn1d_max": CNN((2, 12), (3, 2), 3, hidden=(4,), pool="max", init="torch", seed=4),
        "cnn1d_avg": CNN((2, 12), (3, 2), 3, pool="avg", init="torch", seed=5),
    }


def _inputs(model: nn.Module, n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *model.input_shape), generator=g, dtype=DTYPE)


@pytest.mark.parametrize("name", list(_models()))
def test_random_node_rescaling_keeps_function_and_path_norm(name):
    model = _models()[name].to(DTYPE)
    x = _inputs(model)
    with torch.no_grad():
        before_out = model(x)
    before_params = {k: v.detach().clone() for k, v in model.named_parameters()}
    before_norms = {p: float(path_norm(model, p=p)) for p in (1.0, 2.0)}
    before_mass = {k: v * before_params[k].abs() ** 2 for k, v in path_scales(model).items()}

    random_node_rescaling(model, torch.Generator().manual_seed(42), low=0.2, high=5.0)

    with torch.no_grad():
        torch.testing.assert_close(model(x), before_out, rtol=1e-10, atol=1e-10)
    for p, value in before_norms.items():
        assert math.isclose(float(path_norm(model, p=p)), value, rel_tol=1e-10)
    after = dict(model.named_parameters())
    layers = weighted_layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    for i, layer in enumerate(layers):
        prefix = names[id(layer)]
        assert not torch.allclose(after[f"{prefix}.weight"], before_params[f"{prefix}.weight"]), prefix
        if i < len(layers) - 1:  # the output layer's bias belongs to no hidden unit
            assert not torch.allclose(after[f"{prefix}.bias"], before_params[f"{prefix}.bias"]), prefix
        else:
            torch.testing.assert_close(after[f"{prefix}.bias"], before_params[f"{prefix}.bias"], rtol=0, atol=0)
    # gamma itself changes, but |w_e|^2 gamma_e (the paths through e) does not
    gamma = path_scales(model)
    assert any(not torch.allclose(gamma[k], before_mass[k] / before_params[k] ** 2) for k in gamma)
    for k, g in gamma.items():
        torch.testing.assert_close(g * after[k].detach() ** 2, before_mass[k], rtol=1e-10, atol=1e-12)


def test_rescale_unit_linear_entries():
    model = MLP((3,), (4,), 2, init="torch", seed=0).to(DTYPE)
    first, second = model[1], model[3]
    w1, b1, w2 = first.weight.detach().clone(), first.bias.detach().clone(), second.weight.detach().clone()
    x = _inputs(model)
    with torch.no_grad():
        out = model(x)
    rescale_unit(first, second, 2, 3.0)
    expected_w1, expected_b1, expected_w2 = w1.clone(), b1.clone(), w2.clone()
    expected_w1[2] *= 3.0
    expected_b1[2] *= 3.0
    expected_w2[:, 2] /= 3.0
    torch.testing.assert_close(first.weight.detach(), expected_w1, rtol=0, atol=0)
    torch.testing.assert_close(first.bias.detach(), expected_b1, rtol=0, atol=0)
    torch.testing.assert_close(second.weight.detach(), expected_w2, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), out, rtol=1e-12, atol=1e-12)


def test_rescale_unit_conv_channel_before_flatten_divides_its_block():
    model = CNN((1, 4, 4), (3,), 2, init="torch", seed=0).to(DTYPE)  # conv(3 ch) -> pool -> 3 x 2 x 2 -> Linear(12, 2)
    conv, head = weighted_layers(model)
    w = head.weight.detach().clone()
    x = _inputs(model)
    with torch.no_grad():
        out = model(x)
    rescale_unit(conv, head, 1, 0.5)
    expected = w.clone()
    expected[:, 4:8] /= 0.5
    torch.testing.assert_close(head.weight.detach(), expected, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x), out, rtol=1e-12, atol=1e-12)


def test_rescale_unit_errors():
    model = MLP((3,), (4, 5), 2)
    l1, l2, l3 = weighted_layers(model)
    for c in (0.0, -2.0):
        with pytest.raises(ValueError, match="positive"):
            rescale_unit(l1, l2, 0, c)
    for index in (4, -1, 100):
        with pytest.raises(ValueError, match="out of range"):
            rescale_unit(l1, l2, index, 2.0)
    with pytest.raises(ValueError, match="takes"):
        rescale_unit(l1, l3, 0, 2.0)  # 4 outputs into a layer with 5 inputs: they do not connect


def test_weighted_layers_in_forward_order():
    model = CNN((1, 8, 8), (2, 3), 3, hidden=(4,))
    layers = weighted_layers(model)
    assert [type(m) for m in layers] == [nn.Conv2d, nn.Conv2d, nn.Linear, nn.Linear]
    assert [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))] == layers


@pytest.mark.parametrize("build", [
    lambda init: MLP((1, 4, 4), (8, 6, 5), 3, init=init, seed=7),
    lambda init: CNN((1, 8, 8), (2, 3), 3, hidden=(4,), init=init, seed=8),
], ids=["mlp", "cnn"])
def test_unbalanced_layer_init_is_a_layerwise_rescaling_of_kaiming(build):
    balanced, unbalanced = build("kaiming"), build("unbalanced-layer")
    x = _inputs(balanced).float()
    with torch.no_grad():
        torch.testing.assert_close(unbalanced(x), balanced(x), rtol=1e-4, atol=1e-5)
    assert math.isclose(float(path_norm(unbalanced)), float(path_norm(balanced)), rel_tol=1e-5)
    factors = []
    for lb, lu in zip(weighted_layers(balanced), weighted_layers(unbalanced)):
        ratio = lu.weight.detach().double() / lb.weight.detach().double()
        factors.append(ratio.mean().item())
        torch.testing.assert_close(ratio, torch.full_like(ratio, factors[-1]), rtol=1e-5, atol=0)
    assert math.isclose(math.prod(factors), 1.0, rel_tol=1e-5)
    assert max(abs(math.log(c)) for c in factors) > 0.1, f"the layers were not rescaled: {factors}"


@pytest.mark.parametrize("build", [
    lambda init: MLP((1, 4, 4), (8, 6, 5), 3, init=init, seed=7),
    lambda init: CNN((1, 8, 8), (8, 3), 3, hidden=(4,), init=init, seed=8),
], ids=["mlp", "cnn"])
def test_unbalanced_init_is_a_unitwise_rescaling_of_kaiming(build):
    """Same function and path norm; every hidden unit's incoming weights scaled by its own factor."""
    balanced, unbalanced = build("kaiming"), build("unbalanced")
    x = _inputs(balanced).float()
    with torch.no_grad():
        torch.testing.assert_close(unbalanced(x), balanced(x), rtol=1e-4, atol=1e-5)
    assert math.isclose(float(path_norm(unbalanced)), float(path_norm(balanced)), rel_tol=1e-5)
    first_b, first_u = weighted_layers(balanced)[0], weighted_layers(unbalanced)[0]
    ratio = (first_u.weight.detach().double() / first_b.weight.detach().double()).flatten(1)
    per_unit = ratio[:, 0]
    torch.testing.assert_close(ratio, per_unit[:, None].expand_as(ratio), rtol=1e-5, atol=0)
    assert per_unit.max() / per_unit.min() > 2, "units were not rescaled by different factors"

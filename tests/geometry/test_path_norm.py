"""Path norms and path scales against independent references.

References (Neyshabur, Salakhutdinov & Srebro 2015, Sec. 2-3):
- MLPs and residual sums: explicit enumeration of every path (tests/geometry/reference.py).
- CNNs with pooling: the product of dense, entrywise-powered layer operators (pooling windows
  written out index by index) for pi, and central finite differences of pi with respect to
  |w_e|^p for gamma (pi is affine in each |w_e|^p, so the difference quotient is exact up to
  rounding).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from geomopt.geometry import PathScales, RankOneScale, UnsupportedModuleError, path_norm, path_scales
from geomopt.nn import CNN, MLP
from tests.geometry.reference import brute_force_gamma, brute_force_pi, dense_chain_pi

DTYPE = torch.float64
RTOL, ATOL = 1e-10, 1e-12




# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def fill_random(model: nn.Module, seed: int, low: float | None = None, high: float | None = None) -> nn.Module:
    """Cast to float64 and draw every parameter afresh: N(0, 1), or random sign times U(low, high)."""
    model.to(DTYPE)
    g = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if low is None:
            param.copy_(torch.randn(param.shape, generator=g, dtype=DTYPE))
        else:
            mag = torch.empty(param.shape, dtype=DTYPE).uniform_(low, high, generator=g)
            sign = torch.randint(0, 2, param.shape, generator=g).to(DTYPE) * 2 - 1
            param.copy_(sign * mag)
    return model


def linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def reference_gamma_by_name(prefixed_layers: list[tuple[str, nn.Linear]], p: float) -> dict[str, torch.Tensor]:
    layers = [(m.weight.detach(), None if m.bias is None else m.bias.detach()) for _, m in prefixed_layers]
    out = {}
    for (name, _), (gw, gb) in zip(prefixed_layers, brute_force_gamma(layers, p)):
        out[f"{name}.weight"] = gw
        if gb is not None:
            out[f"{name}.bias"] = gb
    return out


def assert_scales_equal(got: dict, expected: dict[str, torch.Tensor], model: nn.Module) -> None:
    params = dict(model.named_parameters())
    assert set(got) == set(params) == set(expected)
    for name, value in got.items():
        dense = value.to_dense() if isinstance(value, RankOneScale) else value
        assert dense.shape == params[name].shape, name
        torch.testing.assert_close(dense, expected[name], rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


def pi_of(scales: PathScales) -> float:
    return float(scales.path_norm()) ** scales.p


# ---------------------------------------------------------------------------------------------
# the reference itself, on a hand-computed case
# ---------------------------------------------------------------------------------------------


def test_reference_enumeration_hand_computed():
    # 1 -> 1 -> 1 with biases: paths x-h-y (2*5), b1-h-y (3*5), b2-y (7).
    layers = [(torch.tensor([[2.0]], dtype=DTYPE), torch.tensor([3.0], dtype=DTYPE)),
              (torch.tensor([[5.0]], dtype=DTYPE), torch.tensor([-7.0], dtype=DTYPE))]
    assert brute_force_pi(layers, 2) == 4 * 25 + 9 * 25 + 49
    assert brute_force_pi(layers, 1) == 10 + 15 + 7
    (gw1, gb1), (gw2, gb2) = brute_force_gamma(layers, 2)
    assert (gw1.item(), gb1.item(), gw2.item(), gb2.item()) == (25.0, 25.0, 4.0 + 9.0, 1.0)
    # and the two references agree with each other on a small MLP
    model = fill_random(MLP((3,), (4, 2), 3), seed=1)
    lin = [(m.weight.detach(), m.bias.detach()) for _, m in linears(model)]
    for p in (1.0, 2.0, 3.0):
        assert math.isclose(dense_chain_pi(list(model), (3,), p), brute_force_pi(lin, p), rel_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# MLPs: enumeration, fast factored path and generic graph path
# ---------------------------------------------------------------------------------------------


@st.composite
def mlp_specs(draw):
    depth = draw(st.integers(1, 4))  # number of Linear layers
    widths = draw(st.lists(st.integers(1, 4), min_size=depth + 1, max_size=depth + 1))
    return dict(widths=widths, bias=draw(st.booleans()), input_2d=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31 - 1)), p=draw(st.sampled_from([1.0, 2.0, 3.0])))


@settings(max_examples=30, deadline=None, database=None)
@given(spec=mlp_specs())
def test_mlp_path_norm_and_scales_match_enumeration(spec):
    widths, p = spec["widths"], spec["p"]
    input_shape = (1, widths[0]) if spec["input_2d"] else (widths[0],)
    model = fill_random(MLP(input_shape, widths[1:-1], widths[-1], bias=spec["bias"]), spec["seed"])
    layers = [(m.weight.detach(), None if m.bias is None else m.bias.detach()) for _, m in linears(model)]
    ref_pi = brute_force_pi(layers, p)
    ref_gamma = reference_gamma_by_name(linears(model), p)

    scales = PathScales(model, p=p)
    assert scales.factored
    assert math.isclose(pi_of(scales), ref_pi, rel_tol=RTOL)
    assert math.isclose(float(path_norm(model, p=p)), ref_pi ** (1 / p), rel_tol=RTOL)

    fast = scales.compute()
    assert all(isinstance(fast[f"{n}.weight"], RankOneScale) for n, _ in linears(model))
    assert_scales_equal(fast, ref_gamma, model)
    assert_scales_equal(scales._compute_graph(), ref_gamma, model)
    assert_scales_equal(scales.dense(), ref_gamma, model)
    assert_scales_equal(path_scales(model, p=p), ref_gamma, model)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_plain_linear_chain_without_input_shape(p):
    """A bare nn.Sequential of Linear/ReLU (no Flatten, no input_shape attribute) is factored too."""
    model = fill_random(nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2)), 7)
    scales = PathScales(model, p=p)
    assert scales.factored
    ref_gamma = reference_gamma_by_name(linears(model), p)
    layers = [(m.weight.detach(), m.bias.detach()) for _, m in linears(model)]
    assert math.isclose(pi_of(scales), brute_force_pi(layers, p), rel_tol=RTOL)
    assert_scales_equal(scales.compute(), ref_gamma, model)
    assert_scales_equal(scales._compute_graph(), ref_gamma, model)


def _dropout_mlp_and_reference() -> tuple[MLP, MLP]:
    return fill_random(MLP((3,), (4, 3), 2, dropout=0.5), 3), fill_random(MLP((3,), (4, 3), 2), 3)


def test_dropout_is_an_edge_of_weight_one_eval_mode():
    model, ref = _dropout_mlp_and_reference()
    model.eval()
    assert math.isclose(float(path_norm(model)), float(path_norm(ref)), rel_tol=RTOL)
    scales = PathScales(model)
    ref_gamma = reference_gamma_by_name(linears(model), 2.0)
    assert_scales_equal(scales.compute(), ref_gamma, model)
    assert_scales_equal(scales._compute_graph(), ref_gamma, model)


def test_dropout_in_training_mode_factored_scales():
    model, _ = _dropout_mlp_and_reference()
    model.train()
    scales = PathScales(model)
    assert scales.factored
    assert_scales_equal(scales.compute(), reference_gamma_by_name(linears(model), 2.0), model)


def test_dropout_in_training_mode_path_norm_and_graph_scales():
    model, ref = _dropout_mlp_and_reference()
    model.train()
    torch.manual_seed(0)
    assert math.isclose(float(path_norm(model)), float(path_norm(ref)), rel_tol=RTOL)
    scales = PathScales(model)
    assert_scales_equal(scales._compute_graph(), reference_gamma_by_name(linears(model), 2.0), model)


def test_scales_are_recomputed_not_accumulated():
    """compute() reflects the current weights every call (the authors' script accumulated .grad)."""
    model = fill_random(MLP((3,), (4,), 2), 5)
    scales = PathScales(model)
    for _ in range(3):
        assert_scales_equal(scales.compute(), reference_gamma_by_name(linears(model), 2.0), model)
        assert_scales_equal(scales._compute_graph(), reference_gamma_by_name(linears(model), 2.0), model)
    fill_random(model, 6)
    assert_scales_equal(scales.compute(), reference_gamma_by_name(linears(model), 2.0), model)
    assert_scales_equal(scales._compute_graph(), reference_gamma_by_name(linears(model), 2.0), model)


@torch.no_grad()
def _mlp_with_zeros(dead_unit: bool) -> MLP:
    model = fill_random(MLP((3,), (3, 2), 2), 11)
    model[1].weight[0, 1] = 0.0  # isolated zero weights: no unit loses all its paths
    model[3].weight[1, 2] = 0.0
    model[3].bias[0] = 0.0
    if dead_unit:  # hidden unit 1 of the first layer: every incoming weight and its bias are 0
        model[1].weight[1].zero_()
        model[1].bias[1] = 0.0
    return model


@pytest.mark.parametrize("p", [1.0, 2.0])
def test_zero_weights_match_enumeration(p):
    model = _mlp_with_zeros(dead_unit=False)
    ref_gamma = reference_gamma_by_name(linears(model), p)
    scales = PathScales(model, p=p)
    assert_scales_equal(scales.compute(), ref_gamma, model)
    assert_scales_equal(scales._compute_graph(), ref_gamma, model)


def test_unit_with_zero_incoming_weights_factored_path():
    model = _mlp_with_zeros(dead_unit=True)
    ref_gamma = reference_gamma_by_name(linears(model), 2.0)
    assert ref_gamma["1.weight"][1].min() > 0  # paths through the incoming edges still exist
    assert_scales_equal(PathScales(model).compute(), ref_gamma, model)


def test_unit_with_zero_incoming_weights_graph_path():
    model = _mlp_with_zeros(dead_unit=True)
    ref_gamma = reference_gamma_by_name(linears(model), 2.0)
    assert_scales_equal(PathScales(model)._compute_graph(), ref_gamma, model)


# ---------------------------------------------------------------------------------------------
# residual sums: paths of both branches add
# ---------------------------------------------------------------------------------------------


class Residual(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int, bias: bool):
        super().__init__()
        self.lin1 = nn.Linear(d_in, hidden, bias=bias)
        self.lin2 = nn.Linear(hidden, d_out, bias=bias)
        self.lin3 = nn.Linear(d_in, d_out, bias=bias)
        self.act = nn.ReLU()

    def forward(self, x):
        return torch.relu(self.lin2(self.act(self.lin1(x)))) + self.lin3(x)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_residual_sum_adds_paths(bias, p):
    model = fill_random(Residual(3, 4, 2, bias), 13)
    branch = [(model.lin1.weight, model.lin1.bias), (model.lin2.weight, model.lin2.bias)]
    skip = [(model.lin3.weight, model.lin3.bias)]
    with torch.no_grad():
        ref_pi = brute_force_pi(branch, p) + brute_force_pi(skip, p)
    scales = PathScales(model, p=p)
    assert not scales.factored
    assert math.isclose(pi_of(scales), ref_pi, rel_tol=RTOL)
    assert math.isclose(float(path_norm(model, p=p)), ref_pi ** (1 / p), rel_tol=RTOL)
    with torch.no_grad():
        ref_gamma = {**reference_gamma_by_name([("lin1", model.lin1), ("lin2", model.lin2)], p),
                     **reference_gamma_by_name([("lin3", model.lin3)], p)}
    assert_scales_equal(scales.compute(), ref_gamma, model)
    assert_scales_equal(path_scales(model, p=p), ref_gamma, model)


# ---------------------------------------------------------------------------------------------
# CNNs with pooling: dense-operator reference and finite differences
# ---------------------------------------------------------------------------------------------


def tiny_cnn2d() -> tuple[nn.Module, tuple[int, ...]]:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (2, 2, 2)
        nn.Conv2d(2, 2, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),   # (2, 1, 1)
        nn.Flatten(), nn.Linear(2, 3))
    return fill_random(model, 21, 0.5, 1.5), (1, 4, 4)


def tiny_cnn1d() -> tuple[nn.Module, tuple[int, ...]]:
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3, stride=2, padding=1), nn.ReLU(),          # (3, 5)
        nn.MaxPool1d(3, stride=2, padding=1),                         # (3, 3), overlapping windows
        nn.Conv1d(3, 2, 2, padding=1), nn.ReLU(),                     # (2, 4)
        nn.AvgPool1d(2, padding=1),                                   # (2, 3), padded window
        nn.Flatten(), nn.Linear(6, 2))
    return fill_random(model, 22, 0.5, 1.5), (2, 9)


def tiny_cnn2d_nobias_adaptive() -> tuple[nn.Module, tuple[int, ...]]:
    model = nn.Sequential(
        nn.Conv2d(2, 3, 2, bias=False), nn.ReLU(), nn.MaxPool2d(2, stride=1),  # (3, 3, 3)
        nn.Conv2d(3, 2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2, bias=False))
    return fill_random(model, 23, 0.5, 1.5), (2, 4, 5)


def geomopt_cnn(pool: str, dims: int) -> tuple[nn.Module, tuple[int, ...]]:
    shape = (1, 6, 6) if dims == 2 else (2, 8)
    model = CNN(shape, (2, 3), 3, hidden=(4,), pool=pool)
    return fill_random(model, 24, 0.5, 1.5), shape


CNNS = {
    "cnn2d": tiny_cnn2d,
    "cnn1d_stride_padding": tiny_cnn1d,
    "cnn2d_nobias_adaptive": tiny_cnn2d_nobias_adaptive,
    "geomopt_cnn2d_max": lambda: geomopt_cnn("max", 2),
    "geomopt_cnn2d_avg": lambda: geomopt_cnn("avg", 2),
    "geomopt_cnn1d_max": lambda: geomopt_cnn("max", 1),
    "geomopt_cnn1d_avg": lambda: geomopt_cnn("avg", 1),
}


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("name", list(CNNS))
def test_cnn_path_norm_matches_dense_operators(name, p):
    model, shape = CNNS[name]()
    ref_pi = dense_chain_pi(list(model), shape, p)
    assert math.isclose(float(path_norm(model, p=p, input_shape=shape)) ** p, ref_pi, rel_tol=RTOL)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("name", ["cnn2d", "cnn1d_stride_padding", "cnn2d_nobias_adaptive", "geomopt_cnn2d_avg",
                                  "geomopt_cnn1d_max"])
def test_cnn_scales_match_finite_differences(name, p):
    model, shape = CNNS[name]()
    scales = PathScales(model, p=p, input_shape=shape)
    assert not scales.factored
    gamma = scales.dense()
    also = path_scales(model, p=p, input_shape=shape)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            assert gamma[pname].shape == param.shape
            torch.testing.assert_close(also[pname], gamma[pname], rtol=0, atol=0)
            fd = torch.empty_like(param)
            flat, fd_flat = param.view(-1), fd.view(-1)
            for i in range(flat.numel()):
                w = flat[i].item()
                s = abs(w) ** p
                h = 0.1 * s
                flat[i] = math.copysign((s + h) ** (1 / p), w)
                plus = pi_of(scales)
                flat[i] = math.copysign((s - h) ** (1 / p), w)
                minus = pi_of(scales)
                flat[i] = w
                fd_flat[i] = (plus - minus) / (2 * h)
            torch.testing.assert_close(gamma[pname], fd, rtol=1e-8, atol=0, msg=lambda m: f"{pname}: {m}")


# ---------------------------------------------------------------------------------------------
# unsupported modules and operations
# ---------------------------------------------------------------------------------------------


class TanhInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return torch.tanh(self.lin(x))


class AddConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        return self.lin(x) + 1.0


def _seq(middle: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), middle, nn.Linear(4, 2))


UNSUPPORTED = {
    "tanh": (lambda: _seq(nn.Tanh()), r"'1' \(Tanh\)"),
    "sigmoid": (lambda: _seq(nn.Sigmoid()), r"'1' \(Sigmoid\)"),
    "batchnorm_train": (lambda: _seq(nn.BatchNorm1d(4)).train(), r"'1' \(BatchNorm1d\)"),
    "batchnorm_eval": (lambda: _seq(nn.BatchNorm1d(4)).eval(), r"'1' \(BatchNorm1d\)"),
    "layernorm": (lambda: _seq(nn.LayerNorm(4)), r"'1' \(LayerNorm\)"),
    "softmax": (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Softmax(dim=-1)),
                r"'3' \(Softmax\)"),
    "nested_tanh": (lambda: nn.Sequential(nn.Sequential(nn.Linear(3, 4), nn.Tanh()), nn.Linear(4, 2)),
                    r"'0\.1' \(Tanh\)"),
    "torch_tanh_in_forward": (TanhInForward, r"tanh.*TanhInForward"),
    "add_constant": (AddConstant, r"add.*constant"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_modules_are_named(name):
    build, pattern = UNSUPPORTED[name]
    model = build()
    for fn in (path_norm, path_scales, PathScales):
        with pytest.raises(UnsupportedModuleError, match=pattern):
            fn(model, input_shape=(3,))
    assert issubclass(UnsupportedModuleError, ValueError)


def test_batchnorm_message_says_mode():
    with pytest.raises(UnsupportedModuleError, match="training mode"):
        path_norm(_seq(nn.BatchNorm1d(4)).train())
    with pytest.raises(UnsupportedModuleError, match="evaluation mode"):
        path_norm(_seq(nn.BatchNorm1d(4)).eval())


def test_cnn_without_input_shape_is_an_error():
    bare = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="input_shape"):
        path_norm(bare)
    with pytest.raises(ValueError, match="input_shape"):
        PathScales(bare)
    model = CNN((1, 4, 4), (2,), 2)
    del model.input_shape
    with pytest.raises(ValueError, match="input_shape"):
        path_scales(model)
    # given explicitly, it works
    assert path_norm(bare, input_shape=(1, 4, 4)) > 0
    assert path_norm(model, input_shape=(1, 4, 4)) > 0


def test_nonpositive_p_is_an_error():
    with pytest.raises(ValueError, match="p must be positive"):
        PathScales(MLP((3,), (2,), 2), p=0)

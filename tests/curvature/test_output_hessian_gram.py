"""output_hessian_gram against the Hessian square roots of hessian_sqrt_columns (sum_k S_k S_k^T = H)
and, for the categorical likelihood, against torch.func.hessian of the cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geomopt.curvature import hessian_sqrt_columns, output_hessian_gram

pytestmark = pytest.mark.usefixtures("float64_default")


@pytest.mark.parametrize("likelihood", ["categorical", "gaussian", "bernoulli"])
def test_gram_equals_the_square_root_form(likelihood):
    torch.manual_seed(0)
    out, u = torch.randn(5, 4), torch.randn(3, 5, 4)
    s = hessian_sqrt_columns(out, likelihood)  # (K, N, C): H_n = sum_k s_kn s_kn^T
    proj = torch.einsum("knc,rnc->rkn", s, u)
    ref = torch.einsum("ikn,jkn->ij", proj, proj)
    torch.testing.assert_close(output_hessian_gram(out, u, likelihood), ref)


def test_categorical_gram_equals_the_cross_entropy_hessian():
    torch.manual_seed(1)
    out, u = torch.randn(4, 3), torch.randn(2, 4, 3)
    y = torch.randint(0, 3, (4,))
    h = torch.func.hessian(lambda f: F.cross_entropy(f, y, reduction="sum"))(out).reshape(12, 12)
    flat = u.reshape(2, -1)
    torch.testing.assert_close(output_hessian_gram(out, u, "categorical"), flat @ h @ flat.T)

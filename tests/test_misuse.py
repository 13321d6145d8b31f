"""The misuse suite: invalid values for every option of the public Python API and of ``geomopt train``.

Hypothesis draws, for each option, values outside its documented range (NaN, +-inf, negative, zero where it
must be positive, fractions where an integer is due, wrong types, empty data, wrong shapes) and checks that

- the Python API raises a clear error of a documented type (``ValueError``, ``TypeError`` or
  ``FloatingPointError``) whose message names the function and the argument, and changes no parameter;
- the command line exits with code 2 and one line on stderr, no traceback, and neither creates the
  ``--out`` folder nor changes one that exists.

The ranges below are written from the docstrings, independently of the implementation's tables, so that an
option the implementation forgets to check fails here.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from geomopt import implicit, measures
from geomopt.cli import main
from geomopt.implicit.lab import DeepLinearLabConfig, MatrixLabConfig, NormsVsRankConfig
from geomopt.optim import EKFAC, KFAC, MirrorDescent, PathSGD, SteepestDescent
from geomopt.train.config import TrainConfig

ERRORS = (ValueError, TypeError, FloatingPointError)
FAST = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLI = settings(FAST, max_examples=6)  # each example parses the whole command line (~0.05 s)

# ------------------------------------------------------------------ invalid values by documented range
NONFINITE = st.sampled_from([math.nan, math.inf, -math.inf])
NOT_A_NUMBER = st.sampled_from(["0.1", None, [0.1], {"v": 1}, True, object(), 1j])
NEGATIVE = st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False)
FRACTION = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda v: v != int(v))


def bad_number(low: float | None = None, high: float | None = None, low_open: bool = False,
               high_open: bool = False) -> st.SearchStrategy:
    """Anything that is not a finite number in the interval."""
    out = [NONFINITE, NOT_A_NUMBER]
    if low is not None:
        out.append(st.floats(max_value=low, allow_nan=False, allow_infinity=False, exclude_max=not low_open))
    if high is not None:
        out.append(st.floats(min_value=high, allow_nan=False, allow_infinity=False, exclude_min=not high_open))
    return st.one_of(out)


def bad_int(low: int | None = None, high: int | None = None) -> st.SearchStrategy:
    """Anything that is not an integer in ``[low, high]``: fractions, NaN/inf, other types, ints outside."""
    out = [FRACTION, NONFINITE, st.sampled_from(["3", None, [2], True, 2.0])]
    if low is not None:
        out.append(st.integers(max_value=low - 1, min_value=low - 10 ** 6))
    if high is not None:
        out.append(st.integers(min_value=high + 1, max_value=high + 10 ** 6))
    return st.one_of(out)


def not_none(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """For an option where None is valid (it means "the default" or "off")."""
    return strategy.filter(lambda v: v is not None)


POSITIVE = bad_number(low=0, low_open=True)
NONNEGATIVE = bad_number(low=0)
UNIT = bad_number(low=0, high=1, high_open=True)  # [0, 1)
OPEN_UNIT = bad_number(low=0, high=1, low_open=True, high_open=True)  # (0, 1)
COUNT = bad_int(low=1)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _unchanged(model: nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def _raises_naming(fn, *names: str) -> BaseException:
    with pytest.raises(ERRORS) as info:
        fn()
    for name in names:
        assert name in str(info.value), (name, str(info.value))
    assert "\n" not in str(info.value)
    return info.value


# ------------------------------------------------------------------ optimizers
def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


OPTIMIZER_OPTIONS = {
    PathSGD: {"lr": NONNEGATIVE, "momentum": UNIT, "weight_decay": NONNEGATIVE, "eps": POSITIVE, "p": POSITIVE},
    KFAC: {"lr": NONNEGATIVE, "damping": POSITIVE, "momentum": UNIT, "weight_decay": NONNEGATIVE,
           "factor_decay": UNIT, "update_freq": COUNT, "inv_freq": COUNT, "mc_samples": COUNT,
           "kl_clip": not_none(POSITIVE), "damping_interval": COUNT, "damping_decay": OPEN_UNIT, "min_damping": POSITIVE,
           "seed": not_none(bad_int())},
}
OPTIMIZER_OPTIONS[EKFAC] = {**OPTIMIZER_OPTIONS[KFAC], "diag_freq": COUNT, "diag_decay": not_none(UNIT)}
GROUP_OPTIONS = {PathSGD: ("lr", "momentum", "weight_decay", "eps"), KFAC: ("lr", "damping", "momentum", "weight_decay")}
GROUP_OPTIONS[EKFAC] = GROUP_OPTIONS[KFAC]
#: optimizers over parameters (not a model): built from ``model.parameters()``
OPTIMIZER_OPTIONS[SteepestDescent] = {"lr": NONNEGATIVE, "momentum": UNIT}
OPTIMIZER_OPTIONS[MirrorDescent] = {"lr": NONNEGATIVE, "momentum": UNIT, "p": bad_number(low=1, low_open=True),
                                    "beta": POSITIVE}
OPTIMIZER_CASES = [(cls, key) for cls, opts in OPTIMIZER_OPTIONS.items() for key in opts]


def build(cls, model: nn.Module, **options):
    if cls in (SteepestDescent, MirrorDescent):
        return cls(model.parameters(), **options)
    return cls(model, **options)


@FAST
@given(data=st.data())
@pytest.mark.parametrize("cls,key", OPTIMIZER_CASES, ids=[f"{c.__name__}-{k}" for c, k in OPTIMIZER_CASES])
def test_optimizer_option_refused_at_construction(cls, key, data):
    model = mlp()
    before = _params(model)
    bad = data.draw(OPTIMIZER_OPTIONS[cls][key], label=key)
    _raises_naming(lambda: build(cls, model, **{key: bad}), cls.__name__, key)
    assert _unchanged(model, before)


GROUP_CASES = [(cls, key) for cls, keys in GROUP_OPTIONS.items() for key in keys]


@FAST
@given(data=st.data())
@pytest.mark.parametrize("cls,key", GROUP_CASES, ids=[f"{c.__name__}-{k}" for c, k in GROUP_CASES])
def test_group_option_refused_in_add_param_group_and_at_step(cls, key, data):
    bad = data.draw(OPTIMIZER_OPTIONS[cls][key], label=key)
    model = mlp()
    opt = cls(model, lr=0.1, param_groups=[{"params": model[0].parameters()}])
    _raises_naming(lambda: opt.add_param_group({"params": list(model[2].parameters()), key: bad}),
                   "param group 1", key)
    assert len(opt.param_groups) == 1  # the bad group was not added
    opt = cls(model, lr=0.1)
    nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.arange(8) % 3).backward()
    opt.param_groups[0][key] = bad  # as a scheduler or a user might
    before = _params(model)
    _raises_naming(opt.step, "param group 0", key)
    assert _unchanged(model, before)


@pytest.mark.parametrize("cls", [PathSGD, KFAC, EKFAC])
def test_optimizer_of_a_foreign_parameter_or_nothing_trainable(cls):
    model = mlp()
    _raises_naming(lambda: cls(model, param_groups=[{"params": nn.Linear(2, 2).parameters()}]), "not a parameter")
    if cls is not PathSGD:
        model.requires_grad_(False)
        _raises_naming(lambda: cls(model), cls.__name__, "frozen")


# ------------------------------------------------------------------ implicit lab
W4 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
COMPLETION = implicit.Completion.random(4, 4, 8, seed=0)
SENSING = implicit.SensingObjective(COMPLETION, COMPLETION(torch.ones(4, 4, dtype=torch.float64)))
FACTORS = implicit.init_factors((4, 4), 2, alphas=[0.1], seeds=[0])
BAD_TENSORS = st.sampled_from([torch.full((4, 3), math.nan), torch.zeros(0, 3), torch.ones(4), [[1.0, 2.0]], None])

# function name, a call taking the bad value, the argument's strategy
IMPLICIT_CASES = {
    "balanced_factors-depth": (lambda v: implicit.balanced_factors(W4, v), bad_int(low=1)),
    "balanced_factors-W": (lambda v: implicit.balanced_factors(v, 2), BAD_TENSORS),
    "balanced_factors-width": (lambda v: implicit.balanced_factors(W4, 2, v), not_none(bad_int(low=1))),
    "init_factors-depth": (lambda v: implicit.init_factors((4, 4), v, alphas=[1.0], seeds=[0]), bad_int(low=1)),
    "init_factors-alphas": (lambda v: implicit.init_factors((4, 4), 1, alphas=[v], seeds=[0]), NONNEGATIVE),
    "init_factors-seeds": (lambda v: implicit.init_factors((4, 4), 1, alphas=[1.0], seeds=[v]), bad_int()),
    "init_factors-width": (lambda v: implicit.init_factors((4, 4), 2, alphas=[1.0], seeds=[0], width=v),
                           not_none(bad_int(low=1))),
    "factor_shapes-depth": (lambda v: implicit.factor_shapes((4, 4), v), bad_int(low=1)),
    "Completion.random-m": (lambda v: implicit.Completion.random(4, 4, v), bad_int(low=1, high=16)),
    "Completion.random-n1": (lambda v: implicit.Completion.random(v, 4, 2), bad_int(low=1)),
    "Completion.random-seed": (lambda v: implicit.Completion.random(4, 4, 2, seed=v), bad_int()),
    "GaussianSensing-m": (lambda v: implicit.GaussianSensing(3, 3, v), bad_int(low=1)),
    "GaussianSensing-scale": (lambda v: implicit.GaussianSensing(3, 3, 4, scale=v), POSITIVE),
    "random_psd-rank": (lambda v: implicit.random_psd(4, v), bad_int(low=1, high=4)),
    "random_psd-fro_norm": (lambda v: implicit.random_psd(4, 2, fro_norm=v), not_none(POSITIVE)),
    "random_low_rank-rank": (lambda v: implicit.random_low_rank(4, 3, v), bad_int(low=1, high=3)),
    "run_factorized-tol": (lambda v: implicit.run_factorized(SENSING, FACTORS, lr=0.1, steps=5, tol=v),
                           not_none(NONNEGATIVE)),
    "run_factorized-steps": (lambda v: implicit.run_factorized(SENSING, FACTORS, lr=0.1, steps=v), bad_int(low=0)),
    "run_factorized-log_every": (lambda v: implicit.run_factorized(SENSING, FACTORS, lr=0.1, steps=2, log_every=v),
                                 bad_int(low=1)),
    "run_factorized-rel_step": (lambda v: implicit.run_factorized(SENSING, FACTORS, lr=0.1, steps=2, rel_step=v),
                                POSITIVE),
    "run_factorized-lr": (lambda v: implicit.run_factorized(SENSING, FACTORS, lr=v, steps=2),
                          POSITIVE.filter(lambda v: v != [0.1])),  # one lr per run: [0.1] is valid
    "run_factorized-track_sv": (lambda v: implicit.run_factorized(SENSING, FACTORS, lr=0.1, steps=2, track_sv=v),
                                bad_int(low=0)),
    "end_to_end_direction-depth": (lambda v: implicit.end_to_end_direction(W4, W4, v), bad_int(low=1)),
    "end_to_end_step-lr": (lambda v: implicit.end_to_end_step(W4, W4, 2, v), POSITIVE),
    "psd_power-p": (lambda v: implicit.psd_power(torch.eye(3), v), bad_number()),
    "effective_rank-X": (lambda v: implicit.effective_rank(v), BAD_TENSORS),
    "RegressionObjective-p": (lambda v: implicit.RegressionObjective(W4, W4[:, :1], v), bad_number(low=1)),
    "RegressionObjective-X": (lambda v: implicit.RegressionObjective(v, W4[:, :1]), BAD_TENSORS),
    "synthetic_regression-n": (lambda v: implicit.synthetic_regression(v, 4), bad_int(low=4)),
    "synthetic_regression-noise": (lambda v: implicit.synthetic_regression(8, 4, noise=v), NONNEGATIVE),
    "synthetic_regression-condition": (lambda v: implicit.synthetic_regression(8, 4, condition=v), bad_number(low=1)),
    "convergence_bound-depth": (lambda v: implicit.convergence_bound(1.0, 0.1, 0.5, v, 3), bad_int(low=1)),
    "convergence_bound-lr": (lambda v: implicit.convergence_bound(1.0, v, 0.5, 2, 3), POSITIVE),
    "run_scaled_gd-depth": (lambda v: implicit.run_scaled_gd(implicit.RegressionObjective(W4, W4[:, :1]),
                                                             torch.zeros(1, 1, 3, dtype=torch.float64), v, lr=0.1,
                                                             steps=2), bad_int(low=1)),
    "solve_admm-tol": (lambda v: implicit.solve_admm(COMPLETION, torch.ones(8), tol=v), POSITIVE),
    "solve_admm-max_iter": (lambda v: implicit.solve_admm(COMPLETION, torch.ones(8), max_iter=v), bad_int(low=1)),
    "min_nuclear_norm-y": (lambda v: implicit.min_nuclear_norm(COMPLETION, v, solver="admm"),
                           st.sampled_from([torch.full((8,), math.nan), torch.ones(7), None, torch.zeros(0)])),
}


@FAST
@given(data=st.data())
@pytest.mark.parametrize("case", sorted(IMPLICIT_CASES))
def test_implicit_lab_refuses_bad_arguments(case, data):
    call, strategy = IMPLICIT_CASES[case]
    function, arg = case.split("-")
    bad = data.draw(strategy, label=arg)
    names = (function.split(".")[0], arg) if arg not in ("W", "X", "y") else (function.split(".")[0],)
    _raises_naming(lambda: call(bad), *names)


LAB_CONFIGS = {
    MatrixLabConfig: {"n": bad_int(low=1), "rank": bad_int(low=1, high=50), "m": bad_int(low=1),
                      "lr_factor": POSITIVE, "steps": bad_int(low=0), "rel_step": POSITIVE, "tol": NONNEGATIVE,
                      "log_every": bad_int(low=1), "problem_seed": bad_int(), "depths": st.sampled_from([(), (0,), (2.5,)]),
                      "alphas": st.sampled_from([(), (math.nan,), (-1.0,), ("a",)])},
    DeepLinearLabConfig: {"n": bad_int(low=32), "d": bad_int(low=1), "k": bad_int(low=1), "p": bad_number(low=1),
                          "lr": POSITIVE, "steps": bad_int(low=1), "init_scale": POSITIVE, "condition": bad_number(low=1),
                          "seed": bad_int(), "log_every": bad_int(low=1), "target_loss": not_none(NONNEGATIVE),
                          "depths": st.sampled_from([(), (0,), (-2,), (1.5,)])},
    NormsVsRankConfig: {"depth": bad_int(low=2), "init_std": POSITIVE, "lr": POSITIVE, "rel_step": POSITIVE,
                        "steps": bad_int(low=1), "log_every": bad_int(low=1),
                        "thresholds": st.sampled_from([(), (0.0,), (math.inf,)])},
}
LAB_CASES = [(cls, key) for cls, opts in LAB_CONFIGS.items() for key in opts]


@FAST
@given(data=st.data())
@pytest.mark.parametrize("cls,key", LAB_CASES, ids=[f"{c.__name__}-{k}" for c, k in LAB_CASES])
def test_lab_config_validate_refuses_bad_fields(cls, key, data):
    bad = data.draw(LAB_CONFIGS[cls][key], label=key)
    _raises_naming(lambda: cls(**{key: bad}).validate(), key)


# ------------------------------------------------------------------ measures
def probe() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(6, 3), torch.arange(6) % 2


PARAMS = {"w": torch.ones(3)}
MEASURE_CASES = {
    "margin_quantile-q": (lambda v: measures.margin_quantile(torch.randn(5), v), bad_number(low=0, high=1)),
    "margin_quantile-m": (lambda v: measures.margin_quantile(v, 0.1), BAD_TENSORS.filter(
        lambda t: not (isinstance(t, torch.Tensor) and t.dim() == 1 and t.numel() > 0))),
    "bootstrap_kendall-level": (lambda v: measures.bootstrap_kendall([1, 2, 3], [1, 3, 2], level=v), OPEN_UNIT),
    "bootstrap_kendall-samples": (lambda v: measures.bootstrap_kendall([1, 2, 3], [1, 3, 2], samples=v),
                                  bad_int(low=0)),
    "pac_bayes_bound-m": (lambda v: measures.pac_bayes_bound(0.1, 1.0, v), bad_int(low=1)),
    "pac_bayes_bound-delta": (lambda v: measures.pac_bayes_bound(0.1, 1.0, 100, v), OPEN_UNIT),
    "pac_bayes_bound-kl": (lambda v: measures.pac_bayes_bound(0.1, v, 100), NONNEGATIVE),
    "kl_term-sigma": (lambda v: measures.kl_term(PARAMS, None, v, "isotropic"), POSITIVE),
    "perturbation_std-sigma": (lambda v: measures.perturbation_std(PARAMS, v, "isotropic"), NONNEGATIVE),
    "sample_perturbation-seed": (lambda v: measures.sample_perturbation(PARAMS, 0.1, "isotropic", v), bad_int()),
    "worst_case_sharpness-alpha": (lambda v: measures.worst_case_sharpness(None, PARAMS, alpha=v), POSITIVE),
    "worst_case_sharpness-steps": (lambda v: measures.worst_case_sharpness(None, PARAMS, steps=v), COUNT),
    "worst_case_sharpness-restarts": (lambda v: measures.worst_case_sharpness(None, PARAMS, restarts=v), COUNT),
    "search_sigma-threshold": (lambda v: measures.search_sigma(None, PARAMS, threshold=v), POSITIVE),
    "search_sigma-samples": (lambda v: measures.search_sigma(None, PARAMS, samples=v), COUNT),
    "search_sigma-sigma_max": (lambda v: measures.search_sigma(None, PARAMS, sigma_max=v), bad_number(low=0.05)),
    "bisection_sigma-steps": (lambda v: measures.bisection_sigma(None, PARAMS, steps=v), COUNT),
    "logging_points-last": (lambda v: measures.logging_points(v), bad_int(low=0)),
    "center_kernel-kernel": (lambda v: measures.center_kernel(v), st.sampled_from(
        [torch.ones(3), torch.full((2, 2), math.nan), torch.zeros(0, 0), None])),
    "kernel_alignment-x": (lambda v: measures.kernel_alignment(probe()[0], v, probe()[2][:len(v)]
                                                                if isinstance(v, torch.Tensor) else probe()[2]),
                           st.sampled_from([torch.zeros(0, 3), torch.full((6, 3), math.nan), None])),
    "jacobian-chunk_size": (lambda v: measures.jacobian(probe()[0], probe()[1], chunk_size=v), COUNT),
    "centered_targets-y": (lambda v: measures.centered_targets(v, 2), st.sampled_from(
        [torch.tensor([0, 2]), torch.tensor([-1, 0]), torch.zeros(0, dtype=torch.long), torch.ones(2, 2, 2)])),
}
COMPUTE_OPTIONS = {"margin_quantile": bad_number(low=0, high=1), "sharpness_alpha": POSITIVE, "sharpness_steps": COUNT,
                   "sharpness_restarts": COUNT, "sharpness_examples": not_none(COUNT), "flatness_threshold": POSITIVE,
                   "flatness_samples": COUNT, "flatness_examples": not_none(COUNT), "magnitude_eps": NONNEGATIVE,
                   "delta": OPEN_UNIT, "hessian_examples": not_none(COUNT), "seed": bad_int()}
for _key, _strategy in COMPUTE_OPTIONS.items():
    MEASURE_CASES[f"compute-{_key}"] = (
        lambda v, k=_key: measures.compute(probe()[0], [(probe()[1], probe()[2])], **{k: v}), _strategy)


@FAST
@given(data=st.data())
@pytest.mark.parametrize("case", sorted(MEASURE_CASES))
def test_measures_refuse_bad_arguments(case, data):
    call, strategy = MEASURE_CASES[case]
    function, arg = case.split("-")
    bad = data.draw(strategy, label=arg)
    names = (arg,) if function == "compute" else (function, arg)
    _raises_naming(lambda: call(bad), *names)


def test_measures_on_empty_data():
    model, x, y = probe()
    _raises_naming(lambda: measures.compute(model, []), "no examples")
    _raises_naming(lambda: measures.margins(model, []), "no examples")
    _raises_naming(lambda: measures.kernel_alignment(model, x[:0], y[:0]), "kernel_alignment", "x")
    _raises_naming(lambda: measures.kernel_alignment(model, x, y[:3]), "kernel_alignment")


# ------------------------------------------------------------------ TrainConfig and `geomopt train`
TRAIN_FIELDS = {  # None is valid where the field is "X | None"
    "lr": NONNEGATIVE, "momentum": not_none(UNIT), "weight_decay": NONNEGATIVE, "dropout": UNIT,
    "val_fraction": UNIT, "label_noise": bad_number(low=0, high=1), "epochs": COUNT, "batch_size": COUNT,
    "train_size": not_none(COUNT), "checkpoint_every": bad_int(low=0), "max_grad_norm": not_none(POSITIVE),
    "target_train_loss": not_none(NONNEGATIVE), "track_sharpness": bad_int(low=0), "sharpness_examples": COUNT,
    "seq_len": not_none(COUNT), "damping": POSITIVE, "factor_decay": UNIT, "update_freq": COUNT, "inv_freq": COUNT,
    "diag_freq": COUNT, "kl_clip": not_none(POSITIVE), "seed": bad_int(),
    "widths": st.sampled_from([(0,), (64, -1), (2.5,), ("a",)]),
}


@FAST
@given(data=st.data())
@pytest.mark.parametrize("field", sorted(TRAIN_FIELDS))
def test_train_config_refuses_bad_fields(field, data):
    bad = data.draw(TRAIN_FIELDS[field], label=field)
    _raises_naming(lambda: TrainConfig(**{field: bad}), "TrainConfig", field)


def _as_text(value) -> str:
    """What a user would type: JSON's spellings of NaN and infinities (which the flags parse as numbers)."""
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return "" if value is None else str(value)


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse
            code = exc.code
    return code, err.getvalue()


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def train_cli_refuses(field: str, bad, out: Path) -> None:
    """Exit 2, one line on stderr naming the field, no traceback."""
    flag = "--" + field.replace("_", "-")
    code, err = run_cli(["train", "--epochs", "1", "--train-size", "30", "--no-progress", "--out", str(out),
                         f"{flag}={_as_text(bad)}"])  # last: it overrides the quick defaults before it
    assert code == 2, (field, bad, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert field.replace("_", "-") in lines[0] or field in lines[0], lines[0]


@CLI
@given(data=st.data())
@pytest.mark.parametrize("field", sorted(TRAIN_FIELDS))
def test_train_cli_refuses_bad_flags_in_one_line(field, data):
    """... and the --out folder is not created."""
    bad = data.draw(TRAIN_FIELDS[field].filter(lambda v: not isinstance(v, str)), label=field)  # "3" is valid text
    with tempfile.TemporaryDirectory() as tmp:
        train_cli_refuses(field, bad, Path(tmp) / "fresh")
        assert not (Path(tmp) / "fresh").exists()


@pytest.mark.parametrize("field,bad", [("lr", math.nan), ("momentum", 1.0), ("epochs", 0), ("widths", (0,)),
                                       ("damping", -1.0), ("batch_size", 2.5)])
def test_train_cli_leaves_an_existing_out_folder_unchanged(field, bad, tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    (tmp_path / "config.json").write_text("{}")
    before = _tree(tmp_path)
    train_cli_refuses(field, bad, tmp_path)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("argv", [["implicit", "completion", "--n", "4", "--m", "10.5"],
                                  ["implicit", "completion", "--n", "4", "--m", "99"],
                                  ["implicit", "sensing", "--tol=-1"], ["implicit", "sensing", "--depth", "0"],
                                  ["implicit", "sensing", "--lr-factor", "nan"],
                                  ["implicit", "deep-linear", "--lr", "inf"], ["implicit", "deep-linear", "--p", "0.5"],
                                  ["implicit", "deep-linear", "--steps", "-1"]])
def test_implicit_cli_refuses_bad_flags_in_one_line(argv):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lab"
        code, err = run_cli(argv + ["--no-progress", "--out", str(out)])
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert not out.exists()


def test_the_reproductions_of_issue_25():
    """Each was a raw ZeroDivisionError/IndexError/TypeError, a silent non-convergence or a pass."""
    _raises_naming(lambda: implicit.balanced_factors(W4, 0), "balanced_factors", "depth")
    _raises_naming(lambda: implicit.balanced_factors(W4, -2), "balanced_factors", "depth")
    _raises_naming(lambda: implicit.init_factors((4, 4), 2.5, alphas=[1.0], seeds=[0]), "init_factors", "depth")
    _raises_naming(lambda: implicit.Completion.random(10, 10, 10.5), "Completion.random", "m")
    _raises_naming(lambda: implicit.run_factorized(SENSING, FACTORS, lr=0.1, steps=5, tol=-1e-3), "tol")
    _raises_naming(lambda: DeepLinearLabConfig(lr=math.inf).validate(), "deep-linear", "lr")
    model, x, y = probe()
    _raises_naming(lambda: measures.kernel_alignment(model, x[:0], y[:0]), "kernel_alignment", "x")
    frozen = mlp().requires_grad_(False)
    _raises_naming(lambda: KFAC(frozen), "KFAC", "frozen")
    for key in ("lr", "weight_decay", "eps"):
        model = mlp()
        _raises_naming(lambda: PathSGD(model, **{key: math.nan}), "PathSGD", key)
    _raises_naming(lambda: PathSGD(mlp(), lr=math.inf), "PathSGD", "lr")

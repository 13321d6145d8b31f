"""Shared test settings."""

import signal
import warnings

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests use tiny tensors: intra-op threads only add overhead (and contention on a 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _signal_handlers(request):
    """Each test starts with the SIGINT/SIGTERM handlers the session had: a library that installs its own and
    leaves them (torchrun's agent, Ray) would otherwise change what Ctrl-C does in the tests after it. A test
    that leaves one is named in a warning."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        if signal.getsignal(sig) is not handler:
            warnings.warn(f"{request.node.nodeid} left a {signal.Signals(sig).name} handler; restored")
            signal.signal(sig, handler)


@pytest.fixture
def float64_default():
    """Run a test with float64 as torch's default dtype (use with ``pytest.mark.usefixtures``)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C raises KeyboardInterrupt in the tests and their subprocesses even when the suite was started with
    SIGINT ignored (a shell starts background jobs so, and an ignored signal stays ignored across exec): the
    Ctrl-C tests send real SIGINTs."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cuda-as-cpu", action="store_true",
                     help="run the tests marked cuda with the CPU standing in for the GPU (checks their code and "
                          "references where no GPU is; on a GPU, `pytest -m cuda` runs them for real)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` are skipped without a CUDA device (unless ``--cuda-as-cpu``)."""
    if torch.cuda.is_available() or config.getoption("--cuda-as-cpu"):
        return
    skip = pytest.mark.skip(reason="no CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cuda_device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> torch.device:
    """The GPU of a test marked ``cuda`` (the CPU under ``--cuda-as-cpu``), with TF32 off: its float32
    results are compared with the CPU's."""
    if request.config.getoption("--cuda-as-cpu"):
        return torch.device("cpu")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    return torch.device("cuda")

"""Fault injection for tests that run geomopt in subprocesses: with this folder first on PYTHONPATH, Python
imports this module at start-up. ``GEOMOPT_TEST_FAULT="RANK:STEP:HOW"`` makes the process of rank RANK
(``$RANK``, 0 without torchrun) stop after its optimizer's step STEP: ``kill`` (SIGKILL itself),
``hang`` (sleep, alive but silent) or ``interrupt`` (SIGINT itself, as a Ctrl-C)."""

import os

_FAULT = os.environ.get("GEOMOPT_TEST_FAULT")


def _install(rank: int, step: int, how: str) -> None:
    import signal
    import time

    from torch.optim.optimizer import register_optimizer_step_post_hook
    count = [0]

    def hook(optimizer, args, kwargs):
        count[0] += 1
        if count[0] != step or int(os.environ.get("RANK", "0")) != rank:
            return
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "hang":
            time.sleep(3600)
        elif how == "interrupt":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            raise ValueError(f"GEOMOPT_TEST_FAULT: unknown fault {how!r}")

    register_optimizer_step_post_hook(hook)


if _FAULT:
    _rank, _step, _how = _FAULT.split(":")
    _install(int(_rank), int(_step), _how)

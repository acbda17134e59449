"""The children a command starts for training work (training/processes): forks of a forkserver that imported the
training libraries, not of the command."""

import sys

import pytest
import torch

from pipeline.training import processes

STATE = "as imported"  # a test changes it in this process; a fork of this process would see the change


def _report(queue) -> None:
    """In the child: which preloaded modules it started with, and this module's STATE."""
    queue.put(([name for name in processes.PRELOAD if name in sys.modules], STATE))


def _cuda(queue) -> None:
    torch.cuda.init()
    queue.put(torch.cuda.device_count())


def _run(target):
    ctx = processes.context()
    queue = ctx.Queue()
    child = ctx.Process(target=target, args=(queue,))
    child.start()
    try:
        result = queue.get(timeout=120)
    finally:
        child.join(timeout=60)
    assert child.exitcode == 0  # after the join, not in its finally: a failed get keeps its own error
    return result


def test_a_child_starts_with_the_libraries_imported_and_nothing_of_this_process(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "STATE", "changed here")
    preloaded, state = _run(_report)
    assert preloaded == processes.PRELOAD  # imported once by the forkserver, not by each child
    assert state == "as imported"  # the child is not a fork of this process


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_child_can_use_cuda_after_the_forkserver_imported_the_libraries():
    """CUDA cannot start in a fork of a process that started it: the preloaded imports must not start it."""
    assert _run(_cuda) == torch.cuda.device_count()

"""The processes a command starts for training work of its own (the memory probe's settings on the CPU, the ranks
of train.devices=N): forked from one forkserver that has imported the training libraries.

A fresh interpreter spends about 10 s of CPU importing torch, timm and fastai before its first line of work (11.6 s
measured on a 2-core machine), and a spawned child pays that each time. The forkserver pays it once per command;
each child then starts as a fork of it. It is still a child of a clean process: the forkserver holds nothing of the
command's memory (so a child's peak memory is its own work's), and importing these libraries starts no CUDA
(PyTorch's rule for CUDA in children: spawn or forkserver, never fork of a process that has used it).
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import BaseContext

# What every child needs before its work: the libraries, then the run's own modules that import them lazily
PRELOAD = ["torch", "timm", "fastai.vision.all", "pipeline.training.learner", "pipeline.training.run"]


def start_method() -> str:
    """The start method's name, for an API that takes one (torch's elastic agent); the forkserver, started with
    the first child, will preload PRELOAD."""
    multiprocessing.set_forkserver_preload(PRELOAD)
    return "forkserver"


def context() -> BaseContext:
    """The multiprocessing context for such children."""
    return multiprocessing.get_context(start_method())

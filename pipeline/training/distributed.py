"""One run on many processes: torch DDP, one process (rank) per GPU, or per share of the CPU's cores.

Three ways in, one engine. `torchrun --nproc_per_node=N -m pipeline.train ...` starts N ranks itself;
`train.devices=N` starts them from the command, through the engine torchrun uses (`launch`: torch's
elastic_launch, one local node; the ranks start as forks of a forkserver that has imported the libraries,
training/processes); a SLURM job of N tasks (launchers/slurm) exports each task's rank from submitit. Every
rank then runs the same job (pipeline.training.jobs) and builds the same Learner
(training/learner.run_learner); `group` joins the process group (nccl on CUDA, one GPU per LOCAL_RANK; gloo on
the CPU, cores / ranks threads each).

The run: `data_parallel` wraps the model in DistributedDataParallel for each training epoch and gives each
rank every W-th image of the epoch's shuffled order (`ShardedDL`, fastai's DistributedDL with rank 0's
order broadcast over any backend): step k's images over all ranks are the one-process run's step k. The
effective batch stays model.batch_size (`rank_run`): each rank takes batch_size / W of it, in micro-batches
of gcd(batch_size / W, the configured micro-batch), accumulated; DDP averages the ranks' gradients, so a
step's gradient is the one-process run's. Validation runs on every rank over the whole validation set
(exact; every rank gets the same metrics); the final plain pass and TTA run on each rank's contiguous
share of the images, gathered in image order (`sharded`).

One writer: rank 0 alone writes prediction files, checkpoints, logs, the image cache and the job record;
what must be the same on every rank (skip, lock, time budget, split seed, lr_find's lr) is rank 0's
decision, broadcast (`shared`). A rank that fails saves its own traceback in the job's folder and ends its
process; torchrun's agent (or srun, or `launch`) then stops the others, and the same command resumes from the
last checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.errors import PipelineError
from pipeline.training import processes

if TYPE_CHECKING:
    from fastai.callback.core import Callback
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from torch.distributed.launcher.api import LaunchConfig

    from pipeline.training.specs import RunSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

# Hydra overrides of ranks other than 0: no .hydra folder, no log file (warnings and errors go to stderr,
# each line naming its rank); torchrun's ranks also get no run folder of their own (hydra.run.dir=.).
WORKER_OVERRIDES = ("hydra.output_subdir=null", "hydra/job_logging=none")


class RankFailed(PipelineError):
    """A run failed on this rank of a group. The process ends, even in a sweep's job (`ends_process`): the
    other ranks wait for it in a collective, and its end is what makes torchrun's agent, srun or `launch`
    stop them. The same command resumes the run from its last epoch checkpoint. `saved`: where this rank's
    traceback went, said at the end of the one line."""

    ends_process = True

    def __init__(self, run: RunSpec, error: BaseException, saved: str = "") -> None:
        import torch

        from pipeline.errors import one_line

        hint = ""
        if isinstance(error, torch.OutOfMemoryError):
            hint = (
                "; under DDP the out-of-memory retry is off (every rank would have to retry at once): spread the "
                "batch over more ranks, or set train.accum higher (a new run: its hash changes)"
            )
        super().__init__(f"rank {WORLD.rank} of {WORLD.size}: run {run.name} failed: {one_line(error)}{hint}{saved}")


@dataclass(frozen=True)
class World:
    """This process's place in the group: torch's RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


WORLD = World()  # the group this process trains in (set by `group`); one process alone outside it


def env_world() -> World:
    """The rank torchrun, elastic_launch or submitit's TorchDistributedEnvironment put in the environment."""
    env = os.environ
    size = int(env.get("WORLD_SIZE", 1))
    return World(int(env.get("RANK", 0)), size, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", size)))


def is_worker() -> bool:
    """Whether this process is a rank other than 0 of a group: it writes nothing of the job's."""
    return env_world().rank > 0


def worker_overrides(argv: Sequence[str]) -> list[str]:
    """pipeline.train's extra Hydra overrides under torchrun: none for rank 0, no folder nor log file for
    the others. A sweep (-m) under torchrun is refused: torchrun starts one job's ranks."""
    world = env_world()
    if not world.distributed:
        return []
    if "-m" in argv or "--multirun" in argv:
        raise PipelineError("torchrun trains one job's run on its ranks: drop -m (or sweep with train.devices=N)")
    return [] if world.main else ["hydra.run.dir=.", *WORKER_OVERRIDES]


@contextmanager
def group(train: Any) -> Iterator[World]:
    """Join the process group of the environment's ranks (nothing to join for one process): the backend
    and device from train.device, collectives timing out after train.ddp_timeout_min."""
    global WORLD
    world = env_world()
    if not world.distributed:
        yield world
        return
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from pipeline.training.learner import pick_device

    needs_accelerate()
    if train.devices not in (1, world.size):
        raise PipelineError(f"train.devices={train.devices} but {world.size} ranks were started: drop train.devices")
    device = pick_device(train.device)
    if train.sync_bn and device != "cuda":
        raise PipelineError("train.sync_bn=true needs CUDA (torch's SyncBatchNorm has no CPU kernel): drop it")
    if device == "cuda":
        torch.cuda.set_device(world.local_rank)
    else:
        torch.set_num_threads(cpu_threads(world))
    if not world.main:
        worker_logging(world)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=timedelta(minutes=train.ddp_timeout_min))
    WORLD = world
    where = gathered(f"{socket.gethostname()}:{os.getpid()}")
    log.info(
        "DDP: %d ranks (%s, %d threads each on the CPU), host:pid by rank: %s",
        world.size,
        dist.get_backend(),
        torch.get_num_threads(),
        " ".join(where),
    )
    try:
        yield world
    finally:
        WORLD = World()
        dist.destroy_process_group()


def needs_accelerate() -> None:
    """fastai's distributed module (DistributedDL) imports Accelerate: one line when it is missing."""
    import importlib.util

    if importlib.util.find_spec("accelerate") is None:
        raise PipelineError(
            "one run on several ranks needs Accelerate (for fastai.distributed): pip install -e .[distributed]"
        )


def cpu_threads(world: World) -> int:
    """OMP_NUM_THREADS when set (torchrun sets 1 unless told otherwise); else the task's cores under SLURM,
    else this machine's cores shared by its ranks."""
    if threads := os.environ.get("OMP_NUM_THREADS"):
        return int(threads)
    if cores := os.environ.get("SLURM_CPUS_PER_TASK"):
        return int(cores)
    return max(1, len(os.sched_getaffinity(0)) // world.local_size)


def worker_logging(world: World) -> None:
    """A rank other than 0 logs warnings and errors only, to stderr, each line naming the rank."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[rank {world.rank}][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)


def shared(make: Callable[[], T]) -> T:
    """`make()` on rank 0 and its value on every rank: a decision every rank must take alike."""
    if not WORLD.distributed:
        return make()
    import torch.distributed as dist

    box = [make() if WORLD.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank0_first(make: Callable[[], T]) -> T:
    """`make()` on rank 0, then on the others: rank 0 alone writes what it builds (the image cache, the
    file hashes, downloaded weights) and the others read it."""
    if not WORLD.distributed:
        return make()
    import torch.distributed as dist

    if not WORLD.main:
        dist.barrier()
    made = make()
    if WORLD.main:
        dist.barrier()
    return made


def gathered(value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank."""
    if not WORLD.distributed:
        return [value]
    import torch.distributed as dist

    values: list[Any] = [None] * WORLD.size
    dist.all_gather_object(values, value)
    return values


def sharded(compute: Callable[[list[Any]], T], items: Sequence[Any]) -> list[T]:
    """`compute` on this rank's contiguous share of `items` (shares differ by one item at most); the
    results of the ranks whose share is not empty, in rank order, so that together they follow `items`."""
    if not WORLD.distributed:
        return [compute(list(items))]
    n, rank, size = len(items), WORLD.rank, WORLD.size
    share = list(items[rank * n // size : (rank + 1) * n // size])
    return [part for part in gathered(on_this_rank(compute, share) if share else None) if part is not None]


def on_this_rank(compute: Callable[[list[Any]], T], share: list[Any]) -> T:
    """`compute(share)` keeping this rank's tensors: fastai gathers every tensor it detaches from all ranks
    whenever WORLD_SIZE > 1 (fastai.torch_core.maybe_gather, a collective per batch), which a rank working
    on a share of its own, its batches not matching the others', must not do."""
    world_size = os.environ["WORLD_SIZE"]
    os.environ["WORLD_SIZE"] = "1"
    try:
        return compute(share)
    finally:
        os.environ["WORLD_SIZE"] = world_size


def rank_run(run: RunSpec) -> RunSpec:
    """The run as one rank builds its Learner: batch_size / W images per step, in micro-batches of
    gcd(that, the configured micro-batch), so that W ranks step on the configured batch_size."""
    if not WORLD.distributed:
        return run
    if run.batch_size % WORLD.size:
        raise PipelineError(
            f"run {run.name}: batch_size {run.batch_size} does not split over {WORLD.size} ranks: "
            f"set model.batch_size to a multiple of {WORLD.size}"
        )
    share = run.batch_size // WORLD.size
    return replace(run, batch_size=share, accum=share // math.gcd(share, run.micro_batch))


def sharded_dl(dl: DataLoader, world: World) -> DataLoader:
    """fastai's DistributedDL over `dl`, giving this rank every W-th item of the epoch's order (rank 0's,
    broadcast over any backend, where fastai's broadcasts a CUDA tensor), the tail that does not split
    evenly left out, so that every rank has as many batches. `seen`: the items this rank's batches hold."""
    import torch.distributed as dist
    from fastai.distributed import DistributedDL

    class ShardedDL(DistributedDL):
        def _broadcast(self, t: list[int], rank: int) -> list[int]:
            box = [list(t)]
            dist.broadcast_object_list(box, src=rank)
            return box[0]

        def __len__(self) -> int:
            n = self.dl.n // self.world_size
            return n // self.bs if self.drop_last else math.ceil(n / self.bs)

        def get_idxs(self) -> list[int]:
            order = self._broadcast(self.dl.get_idxs(), 0)
            mine = order[self.rank : len(order) // self.world_size * self.world_size : self.world_size]
            self.seen = mine[: len(mine) // self.bs * self.bs] if self.drop_last else mine
            return mine

    return ShardedDL(dl, rank=world.rank, world_size=world.size)


def sync_state(module: Any) -> None:
    """Rank 0's parameters and buffers on every rank (batch norm's running statistics are each rank's own)."""
    import torch.distributed as dist

    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


@contextmanager
def alone(learn: Learner) -> Iterator[None]:
    """The Learner without its data-parallel callback, keeping its own tensors (`on_this_rank`): for rank 0
    training on its own (lr_find)."""
    # the class's flag: a callback's own getattr falls back on the Learner's attributes
    with learn.removed_cbs([cb for cb in learn.cbs if getattr(type(cb), "data_parallel", False)]):
        if not WORLD.distributed:
            yield
            return
        world_size = os.environ["WORLD_SIZE"]
        os.environ["WORLD_SIZE"] = "1"
        try:
            yield
        finally:
            os.environ["WORLD_SIZE"] = world_size


def data_parallel(learn: Learner, run: RunSpec, device: str, sync_bn: bool) -> None:
    """Make `learn` train as one rank of the group (nothing to do for one process): rank 0's weights on
    every rank, batch norm synchronised if `sync_bn`, the DataParallel callback; fastai's logger and
    progress bars on rank 0 only."""
    if not WORLD.distributed:
        return
    from fastai.callback.progress import ProgressCallback
    from fastcore.basics import noop
    from torch import nn

    if sync_bn:
        learn.model = nn.SyncBatchNorm.convert_sync_batchnorm(learn.model)
    sync_state(learn.model)
    learn.add_cb(data_parallel_callback(WORLD, run, device))
    if not WORLD.main:
        learn.remove_cb(ProgressCallback)
        learn.logger = noop


def data_parallel_callback(world: World, run: RunSpec, device: str) -> Callback:
    """fastai's DistributedTrainer without Accelerate, for training epochs only: the model in
    DistributedDataParallel and the training data sharded (`sharded_dl`) from before_train to after_train,
    so that validation, get_preds and TTA see the plain model and data. Gradients are all-reduced only on
    the micro-batch that steps (DDP's no_sync for those GradientAccumulation skips). After each epoch,
    rank 0's weights (and stateful callbacks' state, the weight average's) are every rank's, and rank 0
    logs the images each rank trained on."""
    from fastai.callback.core import Callback
    from fastai.torch_core import find_bs
    from torch.nn.parallel import DistributedDataParallel

    class DataParallel(Callback):
        order, data_parallel = 11, True  # fastai's DistributedTrainer's: after TrainEvalCallback's model.train()

        def before_train(self) -> None:
            self.module = self.learn.model
            self.learn.model = DistributedDataParallel(
                self.module, device_ids=[world.local_rank] if device == "cuda" else None
            )
            self.learn.dl = sharded_dl(self.learn.dl, world)

        def before_batch(self) -> None:
            acc = getattr(self.learn, "gradient_accumulation", None)
            if acc and isinstance(self.learn.model, DistributedDataParallel):
                self.learn.model.require_backward_grad_sync = acc.count + find_bs(self.learn.yb) >= acc.n_acc

        def after_train(self) -> None:
            self.learn.model = self.module
            sync_state(self.module)
            stateful = {cb.name: cb for cb in self.learn.cbs if hasattr(cb, "checkpoint_state")}
            if stateful:
                states = shared(lambda: {name: cb.checkpoint_state() for name, cb in stateful.items()})
                for name, cb in stateful.items():
                    if not world.main:
                        cb.restore_checkpoint_state(states[name])
            log_shards(run, f"{self.epoch + 1}/{self.n_epoch}", self.learn.dls.train.n, gathered(self.learn.dl.seen))

        def after_fit(self) -> None:  # a fit cancelled mid-epoch (lr_find's) skips after_train
            if isinstance(self.learn.model, DistributedDataParallel):
                self.learn.model = self.learn.model.module

    return DataParallel()


def log_shards(run: RunSpec, epoch: str, n_images: int, seen: list[list[int]]) -> None:
    """Rank 0's log of an epoch (`epoch`: k/n of its fit) that trained: the images each rank trained on, and
    that none trained twice."""
    if not WORLD.main:
        return
    for rank, items in enumerate(seen):
        log.info(
            "run %s epoch %s: rank %d of %d trained on %d of %d images",
            run.name,
            epoch,
            rank,
            len(seen),
            len(items),
            n_images,
        )
    every = [i for items in seen for i in items]
    log.info(
        "run %s epoch %s: %d ranks trained on %d distinct images, %d twice, %d left out (the tail of an "
        "uneven split and dropped last micro-batches)",
        run.name,
        epoch,
        len(seen),
        len(set(every)),
        len(every) - len(set(every)),
        n_images - len(set(every)),
    )


def launch(devices: int, train: Callable[..., T], cfg: Any, *args: Any) -> T:
    """train.devices=N: `train(cfg, *args)` on N ranks of this machine, started and watched by torch's elastic
    agent as torchrun starts them (elastic_launch, the engine under torchrun --standalone); rank 0's
    result. A rank that fails stops the others: one line says which and why."""
    import torch
    from hydra.core.hydra_config import HydraConfig
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    from pipeline.training.learner import pick_device

    needs_accelerate()
    if pick_device(cfg.train.device) == "cuda" and (gpus := torch.cuda.device_count()) < devices:
        raise PipelineError(f"train.devices={devices} but {gpus} GPUs are visible: one rank per GPU, lower it")
    hydra = HydraConfig.instance().cfg if HydraConfig.initialized() else None
    log.info("train.devices=%d: starting %d ranks on this machine", devices, devices)
    # the agent's own logs of a failure (a traceback of its poll loop) would bury the one line said below
    quiet = [logging.getLogger(name) for name in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        # the agent's per-rank folders hold the ranks' error files, read into ChildFailedError before it is raised;
        # left to torch, each launch would leave an empty torchelastic_* folder in /tmp
        with tempfile.TemporaryDirectory(prefix="torchelastic_") as logs:
            return elastic_launch(_launch_config(devices, logs), _rank_main)(hydra, train, cfg, *args)[0]
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        raise PipelineError(
            f"{failed_rank(rank, devices, failure)}; the other ranks were stopped. Finished prediction files and "
            "the last epoch checkpoint are kept: run the same command again to continue"
        ) from None
    except SignalException as e:  # Ctrl-C or SIGTERM: the agent has stopped the ranks
        raise KeyboardInterrupt(str(e)) from None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _launch_config(devices: int, logs: str) -> LaunchConfig:
    """torchrun --standalone's settings for `devices` ranks on this machine, no restarts, the agent's logs in `logs`."""
    import uuid

    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.launcher.api import LaunchConfig

    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=devices,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method=processes.start_method(),
        logs_specs=DefaultLogsSpecs(log_dir=logs),
    )


def failed_rank(rank: int, size: int, failure: Any) -> str:
    """What ended a failed rank, in a line: its error's own (a RankFailed names its rank and run), or the
    signal that killed it, or its exit code."""
    if failure.exitcode < 0:
        return f"rank {rank} of {size} failed (ended by {failure.signal_name()})"
    message = failure.message.get("message", "") if isinstance(failure.message, dict) else str(failure.message)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines or "elastic/errors.html" in lines[-1]:  # no error recorded: torch's hint to enable one
        return f"rank {rank} of {size} failed (exit code {failure.exitcode})"
    last = lines[-1].removeprefix("PipelineError: ")
    return last.removeprefix("RankFailed: ") if last.startswith("RankFailed: ") else f"rank {rank} of {size}: {last}"


def _rank_main(hydra: Any, train: Callable[..., T], cfg: Any, *args: Any) -> T:
    """One rank started by `launch`: rank 0 logs where the command's Hydra job logs (its folder's log
    file and the console); then the job, in the group."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log

    if hydra is not None:
        HydraConfig.instance().set_config(hydra)
        if env_world().main:
            configure_log(hydra.hydra.job_logging, hydra.hydra.verbose)
    with group(cfg.train):
        return train(cfg, *args)

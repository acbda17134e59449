"""Follow the train path: a tiny real training from `train_model` to its prediction file, listing the
first call of each of our functions in order with its package, and counting the files, the packages,
the moves between packages (and how many return to a higher layer, as a caller goes on after a call
down) and the calls up a layer (a lower layer's module calling a higher one's: what the layer rules
forbid, docs/architecture.md). A measure of how straight the path a reader follows is; run it before
and after moving code.

    .venv/bin/python scripts/trace_train_path.py [--steps]
"""

from __future__ import annotations

import itertools
import sys
import tempfile
from pathlib import Path
from types import FrameType

from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
LAYER = {"base": 0, "data": 1, "training": 2, "ensemble": 2, "kaggle": 3, "launchers": 3, "commands": 4}
BASE = {"errors", "tables", "fileio", "registry", "config", "predictions", "blend_file", "curves"}


def unit(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1] if parts[1] in LAYER else "commands"


def tiny_config(tmp: Path) -> DictConfig:
    """One epoch of EfficientNet-Lite0 (its real ImageNet weights) at 32 px on 240 Fashion-MNIST images."""
    from hydra import compose, initialize_config_dir

    from pipeline.config import register_configs
    from pipeline.data.demo import build_demo
    from pipeline.train import REGISTRIES
    from pipeline.training.pretrained import convert_lite_weights

    demo = build_demo(
        Path("/usr/share/datasets/fashion-mnist"), tmp / "demo", train_per_class=20, test_per_class=4, seed=0
    )
    convert_lite_weights("tf_efficientnet_lite0", tmp / "weights")
    register_configs(*REGISTRIES)
    overrides = [
        "+model=effnet_lite0", "model.name=trace", f"model.weights={tmp}/weights/tf_efficientnet_lite0.safetensors",
        "model.batch_size=16", "model.variants=[{resize: squish, item_size: [32], size: [32]}]", "train.epochs=1",
        "train.device=cpu", "tta.n=2", f"data.root={demo}", "data.num_workers=0", f"paths.outputs={tmp}/out",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides)


def trace(cfg: DictConfig) -> tuple[list[tuple[str, str]], set[tuple[str, str]]]:
    """(module, function) of the first call of each of our functions while the run trains, and the
    (caller, callee) module pairs where one of our modules called one of a higher layer."""
    from pipeline.training.jobs import train_model

    steps: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    up: set[tuple[str, str]] = set()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        module, name = frame.f_globals.get("__name__", ""), frame.f_code.co_qualname
        if event != "call" or not module.startswith("pipeline") or "<" in name or name.startswith("__create_fn__"):
            return  # comprehensions, module bodies and dataclass plumbing are not steps
        if (module, name) not in seen:
            seen.add((module, name))
            steps.append((module, name))
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
        if caller.startswith("pipeline") and LAYER[unit(caller)] < LAYER[unit(module)]:
            up.add((caller, module))

    sys.setprofile(profile)
    try:
        train_model(cfg)
    finally:
        sys.setprofile(None)
    return steps, up


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        steps, calls_up = trace(tiny_config(Path(tmp)))
    units = [unit(m) for m, _ in steps]
    moves = [(a, b) for a, b in itertools.pairwise(units) if a != b]
    up = [move for move in moves if LAYER[move[1]] > LAYER[move[0]]]
    if "--steps" in sys.argv:
        print("\n".join(f"{unit(m):9} {m}.{f}" for m, f in steps))
        print("\n".join(f"call up a layer: {a} -> {b}" for a, b in sorted(calls_up)))
    print(
        f"{len(steps)} steps, {len({m for m, _ in steps})} files, {len(set(units))} packages, "
        f"{len(moves)} moves between packages ({len(up)} of them returns to a higher layer), "
        f"{len(calls_up)} calls up a layer"
    )


if __name__ == "__main__":
    main()

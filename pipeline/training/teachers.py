"""What a job's runs learn from beyond their label folders: a blend (pipeline.blend_file) as a distillation
teacher (loss=distill, loss.teacher) and as pseudo-labels of test images (data.pseudo).

The blends are loaded and checked once per job, so that a wrong one fails before any run trains; their
content hashes join each run's hash. Each run then takes its own targets (pipeline.data.soft_targets):
- a student's teacher probabilities are the blend's out-of-fold ones, each from teachers that never trained
  on the image, for its training images only (validation images have none: their loss is the label's);
- pseudo-labels are the test images whose blended top probability reaches data.pseudo_threshold, in
  training only; under data.split=kfold, fold k's come from the blend's fold-k models alone
  (fold_test_probs[k]), which never saw fold k's validation images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline import blend_file
from pipeline.blend_file import BlendFile
from pipeline.data.competition import Competition
from pipeline.data.soft_targets import SoftTargets, select_pseudo
from pipeline.errors import PipelineError
from pipeline.training.specs import RunSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """A blend a job's runs learn from: the option naming it, its CSV, its probabilities and content hash."""

    option: str  # loss.teacher | data.pseudo
    csv: str
    blend: BlendFile
    hash: str

    def record(self) -> dict[str, Any]:
        return {"blend": self.csv, "hash": self.hash}


def load_source(option: str, csv: str, comp: Competition) -> Source:
    """The blend `option` names, loaded (pipeline.blend_file: one line when absent or invalid) and checked
    against the competition's classes and test images."""
    blend = blend_file.load(csv, option)
    if blend.vocab != comp.vocab:
        raise PipelineError(
            f"{option}={csv}: the blend's classes {blend.vocab} are not this competition's {comp.vocab}: "
            "blend runs of this competition"
        )
    if option == "data.pseudo" and set(blend.test_ids) != set(comp.test_ids):
        raise PipelineError(f"{option}={csv}: the blend predicts other test images than {comp.sample_path} lists")
    path = Path(csv) if str(csv).endswith(".probs.pt") else blend_file.probs_path(csv)
    return Source(option, str(csv), blend, blend_file.content_hash(path))


def check_out_of_fold(source: Source, comp: Competition) -> None:
    """A student's blend has out-of-fold probabilities for every training image it trains on."""
    blend, where = source.blend, f"{source.option}={source.csv}"
    if not blend.has_oof:
        raise PipelineError(
            f"{where}: the blend has no out-of-fold probabilities (its members trained on a holdout or random "
            "split), and a student learns each training image from teachers that never trained on it: train the "
            "teachers with data.split=kfold, blend them, and point loss.teacher at that blend"
        )
    known = set(blend.oof_ids)
    needed = [i for f in comp.train_files if (i := comp.image_id(f)) not in comp.excluded]
    if missing := [i for i in needed if i not in known]:
        raise PipelineError(
            f"{where}: the blend has no out-of-fold probabilities for {len(missing)} of the {len(needed)} training "
            f"images (e.g. {missing[0]}): blend teachers trained on these images with data.split=kfold"
        )


def check_pseudo_split(source: Source, data: Any, comp: Competition) -> None:
    """Under data.split=kfold, the blend has per-fold test probabilities of the run's own folds; under a
    holdout or random split, one warning when its kfold teachers trained on the run's validation images."""
    split = source.blend.split
    where = f"{source.option}={source.csv}"
    if str(data.split) != "kfold":
        if split:
            log.warning(
                "%s: the blend's teachers are kfold runs, which trained on this run's validation images: its "
                "validation figures are optimistic (data.split=kfold on the blend's folds keeps them honest)",
                where,
            )
        return
    ours = {"seed": data.seed, "n_folds": data.folds, "n_images": len(comp.train_files)}
    theirs = {k: split.get(k) for k in ours}
    if not len(source.blend.fold_test_probs) or theirs != ours:
        found = "none" if not split else ", ".join(f"{k} {v}" for k, v in theirs.items())
        wanted = ", ".join(f"{k} {v}" for k, v in ours.items())
        raise PipelineError(
            f"{where}: under data.split=kfold fold k's pseudo-labels must come from the teachers' fold-k models, "
            f"but the blend's kfold split ({found}) is not this run's ({wanted}): blend teachers trained with "
            f"data.split=kfold data.folds={data.folds} data.seed={data.seed}"
        )


@dataclass(frozen=True)
class Teachers:
    """The blends a job's runs learn from; none: the runs learn from their labels alone."""

    distill: Source | None = None
    pseudo: Source | None = None

    @property
    def hashes(self) -> dict[str, str]:
        """What joins the run hash: each blend's content hash, by what the run takes from it."""
        return {kind: s.hash for kind, s in (("distill", self.distill), ("pseudo", self.pseudo)) if s}

    def targets(self, comp: Competition, run: RunSpec, valid_idx: Any) -> SoftTargets | None:
        """The run's probability targets (None: it learns from labels alone)."""
        if not (self.distill or self.pseudo):
            return None
        held = {int(i) for i in valid_idx}
        teacher: dict[Path, torch.Tensor] = {}
        record: dict[str, Any] = {}
        if self.distill:
            rows = dict(zip(self.distill.blend.oof_ids, self.distill.blend.oof_probs, strict=True))
            training = [f for i, f in enumerate(comp.train_files) if i not in held]
            teacher = {f: rows[i].clone() for f in training if (i := comp.image_id(f)) not in comp.excluded}
            chosen = run.recipe.loss
            record["distill"] = self.distill.record() | {"alpha": chosen["alpha"], "temperature": chosen["temperature"]}
        pseudo: dict[Path, torch.Tensor] = {}
        if self.pseudo:
            pseudo = self.pseudo_labels(comp, run)
            if self.distill:  # a pseudo-labelled image's teacher is the blend it came from
                teacher |= pseudo
            record["pseudo"] = self.pseudo.record() | run.recipe.pseudo | {"fold": run.fold, "n_images": len(pseudo)}
        return SoftTargets(list(comp.vocab), pseudo, teacher, bool(run.recipe.pseudo.get("hard")), record)

    def pseudo_labels(self, comp: Competition, run: RunSpec) -> dict[Path, torch.Tensor]:
        """The test images whose top probability reaches the threshold, with the blend's probabilities: fold k's
        models' under kfold (check_pseudo_split made sure the blend has the run's folds), else the blend's."""
        blend, settings = self.pseudo.blend, run.recipe.pseudo
        probs = blend.test_probs if run.fold is None else blend.fold_test_probs[run.fold]
        rows = dict(zip(blend.test_ids, probs, strict=True))
        ordered = torch.stack([rows[i] for i in comp.test_ids])
        chosen = select_pseudo(ordered, settings["threshold"], settings["cap_per_class"])
        log.info(
            "run %s: %d of %d test images reach top probability %g in %s%s and join training",
            run.name,
            len(chosen),
            len(ordered),
            settings["threshold"],
            self.pseudo.csv,
            "" if run.fold is None else f" (its fold-{run.fold} models)",
        )
        return {comp.test_files[i]: ordered[i].clone() for i in chosen}


def load_teachers(cfg: Any, comp: Competition) -> Teachers:
    """The blends cfg names (loss.teacher with loss=distill, data.pseudo), each checked; one line on a
    missing teacher, a blend without what the runs need, or a split the blend does not share."""
    distill = pseudo = None
    if cfg.loss.name == "distill":
        if not cfg.loss.get("teacher"):
            raise PipelineError(
                "loss=distill needs loss.teacher=<a blend's CSV> (python -m pipeline.blend writes the blend's "
                "probabilities beside its CSV; blend teachers trained with data.split=kfold)"
            )
        distill = load_source("loss.teacher", cfg.loss.teacher, comp)
        check_out_of_fold(distill, comp)
    if cfg.data.get("pseudo"):
        pseudo = load_source("data.pseudo", cfg.data.pseudo, comp)
        check_pseudo_split(pseudo, cfg.data, comp)
    return Teachers(distill, pseudo)


def blend_hashes(record: dict[str, Any]) -> dict[str, str]:
    """A prediction file's `teacher` record as Teachers.hashes gives it: each blend's content hash, by kind."""
    return {kind: r["hash"] for kind, r in record.items() if isinstance(r, dict) and "hash" in r}

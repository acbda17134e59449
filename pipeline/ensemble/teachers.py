"""Members that learned from a blend (loss=distill, data.pseudo), and whether that flatters this blend.

A run that learned from a blend records it in its prediction file's `teacher`: {"kind" (distill, pseudo),
"blend" (the teacher blend's CSV), "hash" (pipeline.blend_file.content_hash of its probabilities file)},
or a list of such records. Files from before the field existed have none, and are read as learning from
nothing. When a member's teacher blend holds a run of this blend, the member's validation predictions
carry what that run learned from the same labels, so the nested estimate of this blend is optimistic:
the report says so, comparing run hashes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import blend_file
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from pipeline.ensemble.members import Member
    from pipeline.predictions import Predictions


def teacher_records(run: Predictions) -> list[dict[str, Any]]:
    """The blends `run` learned from, as its prediction file records them."""
    record = getattr(run, "teacher", None)
    records = record if isinstance(record, list) else [record]
    return [r for r in records if isinstance(r, dict) and r.get("hash")]


def _distinct(runs: list[Predictions]) -> list[dict[str, Any]]:
    """The teacher records of a member's runs, once each (a kfold student's folds share theirs)."""
    seen: dict[str, dict[str, Any]] = {}
    for run in runs:
        for record in teacher_records(run):
            seen.setdefault(record["hash"], record)
    return list(seen.values())


def teacher_mark(runs: list[Predictions]) -> str:
    """The report's teacher column: 'distill from sub.csv #1a2b3c4d', or '-'."""
    marks = [
        f"{r.get('kind', '?')} from {Path(str(r.get('blend', '?'))).name} #{str(r['hash'])[:8]}"
        for r in _distinct(runs)
    ]
    return "; ".join(marks) or "-"


def _teacher_blend(record: dict[str, Any]) -> tuple[blend_file.BlendFile | None, str]:
    """The teacher blend's probabilities as the run learned from them, or why they cannot be read."""
    name = str(record.get("blend", ""))
    path = Path(name) if name.endswith(".probs.pt") else blend_file.probs_path(name)
    if not path.is_file():
        return None, f"{path} is gone"
    if blend_file.content_hash(path) != record["hash"]:
        return None, f"{path} has been rewritten since (another blend to the same CSV)"
    try:
        return blend_file.load(path, "the teacher"), ""
    except PipelineError as e:
        return None, str(e)


def teacher_warnings(members: list[Member]) -> list[str]:
    """A line for each member whose teacher blend holds runs of this blend (by run hash), and for each
    teacher blend that cannot be checked."""
    ours = {r.run_hash: m.name for m in members for r in m.runs if r.run_hash}
    notes = []
    for m in members:
        for record in _distinct(m.runs):
            teacher, problem = _teacher_blend(record)
            if teacher is None:
                notes.append(
                    f"{m.name} learned from blend {record.get('blend')}, which cannot be checked for runs of this "
                    f"blend: {problem}"
                )
                continue
            hashes = {run.get("run_hash") for member in teacher.members for run in member.get("runs", [])}
            shared = sorted({ours[h] for h in hashes if h in ours} - {m.name})
            if shared:
                notes.append(
                    f"{m.name} learned from blend {record.get('blend')}, which holds {', '.join(shared)} of this "
                    "blend: the nested estimate is optimistic (its validation predictions carry what those runs "
                    "learned from the same labels)"
                )
    return notes


def teacher_hash(run: Predictions) -> str | None:
    """What the blend's probabilities file records of a run's teacher: the first teacher blend's content hash."""
    records = teacher_records(run)
    return str(records[0]["hash"]) if records else None

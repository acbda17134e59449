"""One registry per named choice: a table from a name to its options' schema, its builder and one
line of description, held by the module that builds what it names (timm's model registry, in small).

A registry with a config `group` stores each option's schema in Hydra's ConfigStore as
`<group>/<name>_schema` (`store`, called by pipeline.config.register_configs for the commands that
compose the group), which the option's file (`conf/<group>/<name>.yaml`) names in its defaults:
adding an option is one entry, one documented YAML file and one test. Anything that lists the choices
(run-name tags, report columns, error messages, the notebook's job config) reads them from here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from pipeline.errors import PipelineError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    build: T  # what the owning module calls to make the thing (a function, or a class)
    doc: str  # one line: what it is and when to choose it
    schema: type | None = None  # the dataclass of its options; None: it takes none
    # how a run's name shows this option where it is not the reference: default, its name and the
    # hyper-parameters that differ from the schema's (e.g. sgd-mom0.8)
    tag: Callable[[dict[str, Any]], str] | None = None

    def defaults(self) -> dict[str, Any]:
        """Its options' reference values (the schema's defaults), the name included."""
        return asdict(self.schema()) if self.schema else {"name": self.name}

    def changed(self, chosen: dict[str, Any]) -> dict[str, Any]:
        """The chosen options (e.g. {"name": "adam", "wd": 0.1, ...}) that differ from the defaults."""
        reference = self.defaults()
        return {k: v for k, v in chosen.items() if k != "name" and (k not in reference or reference[k] != v)}


class Registry(Generic[T]):
    """Named entries of one kind, e.g. Registry("optimizer", where="conf/optimizer/", group="optimizer")."""

    def __init__(self, kind: str, *, where: str, group: str | None = None) -> None:
        self.kind, self.where, self.group = kind, where, group
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, build: T, doc: str, schema: type | None = None, **kw: Any) -> Entry[T]:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        entry = Entry(name, build, doc, schema, **kw)
        self._entries[name] = entry
        return entry

    def register(self, name: str, doc: str, schema: type | None = None, **kw: Any) -> Callable[[T], T]:
        """The decorator form of `add`, for a builder defined right below its entry."""

        def decorate(build: T) -> T:
            self.add(name, build, doc, schema, **kw)
            return build

        return decorate

    def __getitem__(self, name: str) -> Entry[T]:
        """The entry; an unknown name is one line listing the known ones."""
        if name not in self._entries:
            raise PipelineError(
                f"unknown {self.kind} {name!r}: choose one of {', '.join(self._entries)} ({self.where})"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[Entry[T]]:
        return list(self._entries.values())

    def store(self) -> None:
        """Each option's schema in Hydra's ConfigStore as <group>/<name>_schema, which its file names."""
        from hydra.core.config_store import ConfigStore

        for entry in self.entries():
            if self.group and entry.schema is not None:
                ConfigStore.instance().store(group=self.group, name=f"{entry.name}_schema", node=entry.schema)


def check_choices(overrides: list[str], registries: list[Registry[Any]]) -> None:
    """Refuse a command line that chooses an unknown option of a registry's group (optimizer=adamw,
    hydra/launcher=gpu, each value of a sweep's comma list) in one line listing the known ones, before
    Hydra's composition error: several lines, with the schemas listed as options."""
    groups = {r.group: r for r in registries if r.group}
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and key in groups and "(" not in value:  # sweep functions (choice(...), glob(...)) left to Hydra
            for name in value.split(","):
                groups[key][name.strip()]


def refuse_unknown_choices(registries: list[Registry[Any]]) -> None:
    """check_choices on this command line: one line on stderr and exit code 2, as every CLI error."""
    try:
        check_choices(sys.argv[1:], registries)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

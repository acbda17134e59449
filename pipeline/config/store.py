"""Hydra's side of the schemas: the root schemas in its ConfigStore, the job_suffix resolver, and the
resolved config as plain data. The options of the registries' groups (optimizer, schedule, loss) are
and hydra/launcher are declared by their registries (pipeline/registry.py), which the commands composing
them pass here."""

from __future__ import annotations

import os
import secrets
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from pipeline.config.apps import ROOTS

# Tells apart the folders of jobs started in the same second (conf/*.yaml hydra.run.dir and
# hydra.sweep.dir): the process id, unique on a host, and a random part, for jobs on several hosts
# writing one outputs folder. One value per process, so a job's folder is the same wherever it is asked.
JOB_SUFFIX = f"{os.getpid()}-{secrets.token_hex(2)}"


def register_configs(*registries: Any) -> None:
    """The root schemas, the options of the given registries' groups (pipeline.registry.Registry.store)
    and the job_suffix resolver the job folders use; before Hydra composes a config."""
    if not OmegaConf.has_resolver("job_suffix"):
        # cached in the config like Hydra's ${now:}, so a launcher's jobs in other processes keep its value
        OmegaConf.register_new_resolver("job_suffix", lambda: JOB_SUFFIX, use_cache=True)
    cs = ConfigStore.instance()
    for name, node in ROOTS.items():
        cs.store(name=f"{name}_schema", node=node)
    for registry in registries:
        registry.store()


def to_container(cfg: Any) -> dict:
    """The resolved config as plain data (str, numbers, lists, dicts), safe to store anywhere."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)

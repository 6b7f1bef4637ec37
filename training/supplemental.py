"""Which supplemental clips a machine has, and what stage 2 does with them.

DCASE 2025 gives each machine type ~100 supplemental clips of ONE kind: clean machine sound
(no background) or background noise only. They serve differently (Ozeki et al., "Anomalous
sound detection method using contrastive learning", DCASE 2025, section 3.3):
clean clips are extra normal material and the clean part for mixing with background noise;
noise-only clips are background noise to mix into the training clips. The kind is read from the
file names (`training.data.clip_kind`: `machine`/`clean` vs `noise`) or stated in the config
(`{"fan": "clean"}` or one kind for all), which wins where both exist.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.errors import ConfigError
from training.data import clip_kind
from training.recipes.base import MachineArrays

log = logging.getLogger(__name__)

KINDS = ("clean", "noise")


def clip_kinds(paths: Sequence[str | os.PathLike]) -> list[str | None]:
    """Kind of each clip from its DCASE 2025 name: "clean", "noise" or None (not stated)."""
    return [clip_kind(p) for p in paths]


def overall_kind(kinds: Sequence[str | None]) -> str | None:
    """ "clean", "noise", "mixed" (both kinds present) or None (no clip states one)."""
    found = set(kinds) - {None}
    if not found:
        return None
    return found.pop() if len(found) == 1 else "mixed"


def stated_kind(config: str | Mapping[str, str] | None, machine: str) -> str | None:
    """The kind the user stated for `machine`: one kind for all machines, or a per-machine map."""
    if config is None:
        return None
    value = config.get(machine) if isinstance(config, Mapping) else config
    if value is None:
        return None
    if value not in KINDS:
        where = f"supplemental_kind[{machine!r}]" if isinstance(config, Mapping) else "kind"
        raise ConfigError(f"supplemental {where}: {value!r} is not one of {KINDS}")
    return value


@dataclass
class SupplementalUse:
    """What stage 2 takes from one machine's supplemental clips."""

    machine: str
    kind: str | None  # "clean" | "noise" | "mixed" | None
    source: str  # "names" | "config" | "none"
    clean: np.ndarray | None  # [n, samples]: extra normal material and clean parts for mixing
    noise: np.ndarray | None  # [n, samples]: background noise

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "kind_from": self.source,
            "clean_clips": 0 if self.clean is None else len(self.clean),
            "noise_clips": 0 if self.noise is None else len(self.noise),
        }

    def summary(self) -> str:
        d = self.describe()
        if not d["clean_clips"] and not d["noise_clips"]:
            return f"{self.machine}: no supplemental clips used (kind {self.kind}, {self.source})"
        return (
            f"{self.machine}: supplemental kind {self.kind} (from {self.source}): "
            f"{d['clean_clips']} clean clip(s) as extra normal material and clean parts for "
            f"mixing, {d['noise_clips']} noise-only clip(s) as background noise"
        )


def plan_supplemental(
    data: MachineArrays, config: str | Mapping[str, str] | None = None
) -> SupplementalUse:
    """Split `data.supplemental` into clean and noise clips and say how the kind was known.

    Per-clip kinds (`data.supplemental_kinds`, from the names) sort a mixed folder clip by clip;
    otherwise the machine-level kind applies to every clip. A stated kind overrides the names.
    Unknown kind: the clips are not used (a wrong guess would train on noise as normal sound).
    """
    waves = data.supplemental
    if waves is None or len(waves) == 0:
        return SupplementalUse(data.machine, data.supplemental_kind, "none", None, None)
    stated = stated_kind(config, data.machine)
    per_clip = data.supplemental_kinds
    if stated is not None:
        kinds: list[str | None] = [stated] * len(waves)
        source = "config"
    elif per_clip is not None and len(per_clip) == len(waves):
        kinds, source = list(per_clip), "names"
    elif data.supplemental_kind in KINDS:
        kinds, source = [data.supplemental_kind] * len(waves), "names"
    else:
        log.warning(
            "%s: supplemental kind %s cannot be told clip by clip; supplemental clips unused "
            "(state it: supplemental_kind clean|noise)",
            data.machine,
            data.supplemental_kind,
        )
        return SupplementalUse(data.machine, data.supplemental_kind, "none", None, None)
    clean = np.array([k == "clean" for k in kinds])
    noise = np.array([k == "noise" for k in kinds])
    use = SupplementalUse(
        data.machine,
        overall_kind(kinds),
        source,
        waves[clean] if clean.any() else None,
        waves[noise] if noise.any() else None,
    )
    log.info("%s", use.summary())
    return use

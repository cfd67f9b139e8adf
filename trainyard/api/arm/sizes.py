"""VM sizes of the `/arm` surface: what a Batch AI `vmSize` gives each node of a cluster's pool.

A cluster's `vmSize` names a row of this table; the row's `cpus` become the pool's
`slots_per_node`, its `gpus` the pool's `gpus_per_node` (what nodes the pool's provider starts
declare), its `memory_gib` is shown. `TRAINYARD_ARM_VM_SIZES` adds rows or replaces them: a JSON
object (or the path of a file holding one) of size → `{cpus, gpus, memory_gib, family?}`. Names
match case-insensitively, as Azure's do. The family is what the usages route counts vCPUs under
("Standard NC Family"), derived from the name when a row does not give it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError


@dataclass(frozen=True)
class VmSize:
    """One node of this size: its CPU slots, GPUs and memory, and the usage family it counts in."""

    name: str
    cpus: int
    gpus: int
    memory_gib: float
    family: str


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpus: int = Field(ge=1, le=4096)
    gpus: int = Field(0, ge=0, le=64)
    memory_gib: float = Field(ge=0)
    family: str | None = Field(None, min_length=1, max_length=100)


# (cpus, gpus, memory GiB) as Azure documents them for the sizes Batch AI clusters used most.
_DEFAULTS: dict[str, tuple[int, int, float]] = {
    "Standard_D1_v2": (1, 0, 3.5),
    "Standard_D2_v2": (2, 0, 7),
    "Standard_D3_v2": (4, 0, 14),
    "Standard_D4_v2": (8, 0, 28),
    "Standard_D5_v2": (16, 0, 56),
    "Standard_D11_v2": (2, 0, 14),
    "Standard_D12_v2": (4, 0, 28),
    "Standard_D2_v3": (2, 0, 8),
    "Standard_D4_v3": (4, 0, 16),
    "Standard_D8_v3": (8, 0, 32),
    "Standard_D16_v3": (16, 0, 64),
    "Standard_D2s_v3": (2, 0, 8),
    "Standard_D4s_v3": (4, 0, 16),
    "Standard_D8s_v3": (8, 0, 32),
    "Standard_D16s_v3": (16, 0, 64),
    "Standard_F2s_v2": (2, 0, 4),
    "Standard_F4s_v2": (4, 0, 8),
    "Standard_F8s_v2": (8, 0, 16),
    "Standard_NC6": (6, 1, 56),
    "Standard_NC12": (12, 2, 112),
    "Standard_NC24": (24, 4, 224),
    "Standard_NC24r": (24, 4, 224),
    "Standard_NC6s_v2": (6, 1, 112),
    "Standard_NC12s_v2": (12, 2, 224),
    "Standard_NC24s_v2": (24, 4, 448),
    "Standard_NC24rs_v2": (24, 4, 448),
    "Standard_NC6s_v3": (6, 1, 112),
    "Standard_NC12s_v3": (12, 2, 224),
    "Standard_NC24s_v3": (24, 4, 448),
    "Standard_NC24rs_v3": (24, 4, 448),
    "Standard_ND6s": (6, 1, 112),
    "Standard_ND12s": (12, 2, 224),
    "Standard_ND24s": (24, 4, 448),
    "Standard_ND24rs": (24, 4, 448),
    "Standard_ND40rs_v2": (40, 8, 672),
    "Standard_NV6": (6, 1, 56),
    "Standard_NV12": (12, 2, 112),
    "Standard_NV24": (24, 4, 224),
}
# Standard_NC6s_v3 → ("NC", "v3"); Standard_D4_v2 → ("D", "v2"); Standard_F2s_v2 → ("F", "v2").
_FAMILY = re.compile(r"^standard_([a-z]+?)\d+[a-z]*(?:_(v\d+))?$", re.IGNORECASE)


def family_of(name: str) -> str:
    """The quota family Azure counts a size under: `Standard NCv3 Family` for Standard_NC6s_v3."""
    match = _FAMILY.match(name)
    if not match:
        return "Other"
    series, version = match.group(1).upper(), match.group(2) or ""
    return f"Standard {series}{version} Family"


class VmSizeTable:
    """The sizes a cluster may name: the defaults, with TRAINYARD_ARM_VM_SIZES over them."""

    def __init__(self, rows: Mapping[str, VmSize]):
        self._rows = {name.lower(): row for name, row in rows.items()}

    @classmethod
    def from_setting(cls, setting: str | None) -> VmSizeTable:
        """The table for a TRAINYARD_ARM_VM_SIZES value (JSON, or a file's path); raises ValueError."""
        rows = {name: VmSize(name, *values, family_of(name)) for name, values in _DEFAULTS.items()}
        for name, row in _parse(setting).items():
            rows = {k: v for k, v in rows.items() if k.lower() != name.lower()}
            rows[name] = VmSize(name, row.cpus, row.gpus, row.memory_gib, row.family or family_of(name))
        return cls(rows)

    def get(self, name: str) -> VmSize | None:
        return self._rows.get(name.strip().lower())

    def names(self) -> list[str]:
        return sorted(row.name for row in self._rows.values())

    def families(self) -> list[str]:
        return sorted({row.family for row in self._rows.values()})


def _parse(setting: str | None) -> dict[str, _Row]:
    text = (setting or "").strip()
    if not text:
        return {}
    if not text.startswith("{"):
        try:
            text = Path(text).read_text()
        except OSError as exc:
            raise ValueError(f"TRAINYARD_ARM_VM_SIZES: cannot read {text!r}: {exc}") from None
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TRAINYARD_ARM_VM_SIZES is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("TRAINYARD_ARM_VM_SIZES must be a JSON object of size name → {cpus, gpus, memory_gib}")
    rows: dict[str, _Row] = {}
    for name, value in data.items():
        try:
            rows[str(name)] = _Row.model_validate(value)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ValueError(
                f"TRAINYARD_ARM_VM_SIZES[{name!r}]{'.' + where if where else ''}: {first['msg']}"
            ) from None
    return rows

"""What a pool offers: slots, CPUs, memory and GPUs, in total and free now."""

from __future__ import annotations

from dataclasses import dataclass

from ..engine.errors import PoolUnavailable
from .bindings import call_with_pool


@dataclass(frozen=True)
class PoolResources:
    """Totals and free amounts over every execute slot the collector knows."""

    machines: int
    slots: int
    cpus_total: int
    cpus_free: int
    memory_total_mb: int
    memory_free_mb: int
    gpus_total: int
    gpus_free: int
    #: Which pool these figures describe, in words.
    description: str = ""

    def __str__(self) -> str:
        return (f"pool: {self.description}\n"
                f"  {self.machines} machine(s), {self.slots} slot(s)\n"
                f"  CPUs   {self.cpus_free} free of {self.cpus_total}\n"
                f"  memory {self.memory_free_mb} MB free of {self.memory_total_mb} MB\n"
                f"  GPUs   {self.gpus_free} free of {self.gpus_total}")


def collector_resources(config: str | None, description: str = "") -> PoolResources:
    """Ask a pool's collector what its execute slots offer."""
    try:
        ads = call_with_pool(config, lambda htcondor2: htcondor2.Collector().query(
            htcondor2.AdType.Startd,
            projection=["Machine", "SlotType", "Cpus", "Memory", "GPUs", "TotalSlotCpus",
                        "TotalSlotMemory", "TotalSlotGPUs", "State"]))
    except Exception as exc:
        raise PoolUnavailable(f"cannot ask the pool's collector: {exc}") from exc
    machines = {str(ad.get("Machine", "")) for ad in ads}
    cpus_total = cpus_free = mem_total = mem_free = gpus_total = gpus_free = 0
    for ad in ads:
        kind = ad.get("SlotType", "Static")
        cpus, mem, gpus = (int(ad.get(k, 0) or 0) for k in ("Cpus", "Memory", "GPUs"))
        if kind == "Partitionable":
            cpus_total += int(ad.get("TotalSlotCpus", cpus) or cpus)
            mem_total += int(ad.get("TotalSlotMemory", mem) or mem)
            gpus_total += int(ad.get("TotalSlotGPUs", gpus) or gpus)
            cpus_free, mem_free, gpus_free = cpus_free + cpus, mem_free + mem, gpus_free + gpus
        elif kind != "Dynamic":
            cpus_total, mem_total = cpus_total + cpus, mem_total + mem
            gpus_total += gpus
            if ad.get("State") == "Unclaimed":
                cpus_free, mem_free, gpus_free = (cpus_free + cpus, mem_free + mem,
                                                  gpus_free + gpus)
    return PoolResources(len(machines), len(ads), cpus_total, cpus_free, mem_total, mem_free,
                         gpus_total, gpus_free, description)


def local_resources(workers: int, description: str) -> PoolResources:
    """This machine, as the local backend uses it (``workers`` jobs at a time)."""
    import os

    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        memory = 0
    return PoolResources(1, workers, workers, workers, memory, memory, 0, 0, description)

"""What a pool offers: slots, CPUs, memory and GPUs, in total and free now."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import PoolUnavailable


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


def pool_resources(config: str | None = None) -> PoolResources:
    """Ask the pool's collector what its execute slots offer."""
    import htcondor2

    from .condor import activate_config

    activate_config(config)
    try:
        ads = htcondor2.Collector().query(
            htcondor2.AdType.Startd,
            projection=["Machine", "SlotType", "Cpus", "Memory", "GPUs", "TotalSlotCpus",
                        "TotalSlotMemory", "TotalSlotGPUs", "State"])
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
                         gpus_total, gpus_free)

"""The ``htcml`` command: the project's pool and the maps on disk."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from . import devpool
from .engine.errors import HTCMLError


def _pool(args: argparse.Namespace) -> int:
    if args.action == "up":
        state = devpool.up(num_cpus=args.cpus)
        print(f"pool up ({state.mode}); jobs run as {state.job_user}")
        print(f"client configuration: {state.client_config}")
        _print_slots(state.client_config)
        return 0
    if args.action == "down":
        print("pool stopped" if devpool.down() else "no pool was up")
        return 0
    running = devpool.running_state()
    if running is None:
        print("pool is down (start it with: htcml pool up)")
        return 1
    print(f"pool up ({running.mode}), client configuration: {running.client_config}")
    _print_slots(running.client_config)
    return 0


def _print_slots(config: str) -> None:
    from .backends.resources import collector_resources

    try:
        res = collector_resources(config)
    except HTCMLError as exc:
        print(f"(cannot list slots: {exc})")
        return
    print(f"slots: {res.cpus_total} CPUs ({res.cpus_free} free), "
          f"{res.memory_total_mb} MB memory, {res.gpus_total} GPUs ({res.gpus_free} free)")


def _maps(args: argparse.Namespace) -> int:
    from .api import list_maps, maps_text

    infos = list_maps(args.root)
    if not infos:
        print("no maps")
        return 0
    print(maps_text(infos))
    return 0


def _status(args: argparse.Namespace) -> int:
    from . import attach

    with attach(args.name, args.root) as m:
        counts = m.status()
        print(f"{m.name}: {m.n_items} items on {m.backend.description}")
        print("  " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        for item, reason in sorted(m.holds.items())[:10]:
            print(f"  item {item} held: {reason}")
        for item, err in sorted(m.errors.items())[:10]:
            print(f"  item {item} failed: {err.short_type}: {err.message}")
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from . import attach

    with attach(args.name, args.root) as m:
        m.cancel()
        print(f"cancelled the unfinished jobs of {m.name}; finished results stay on disk")
    return 0


def _clean(args: argparse.Namespace) -> int:
    from . import attach, list_maps

    if not args.names and not args.finished:
        print("htcml clean: name the maps to delete, or pass --finished", file=sys.stderr)
        return 2
    targets = args.names or [i.name for i in list_maps(args.root)]
    removed = 0
    for name in targets:
        with attach(name, args.root) as m:
            if args.finished and not m.done:
                continue
            if not m.done:
                m.cancel()
            path: Path = m.store.path
        shutil.rmtree(path)
        removed += 1
        print(f"deleted {name}")
    print(f"{removed} map{'s' if removed != 1 else ''} deleted")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="htcml", description="Throughput ML on HTCondor: the project's pool and maps.")
    parser.add_argument("--root", default=None,
                        help="folder of map folders (default $HTCML_HOME/maps)")
    sub = parser.add_subparsers(dest="command", required=True)
    pool = sub.add_parser("pool", help="start, stop or inspect the project's HTCondor pool")
    pool.add_argument("action", choices=["up", "down", "status"])
    pool.add_argument("--cpus", type=int, default=8, help="slots the pool offers (default 8)")
    pool.set_defaults(func=_pool)
    sub.add_parser("maps", help="list the maps on disk").set_defaults(func=_maps)
    status = sub.add_parser("status", help="item counts, holds and errors of one map")
    status.add_argument("name")
    status.set_defaults(func=_status)
    cancel = sub.add_parser("cancel", help="remove the unfinished jobs of a map")
    cancel.add_argument("name")
    cancel.set_defaults(func=_cancel)
    clean = sub.add_parser("clean", help="delete maps' folders (cancelling their jobs)")
    clean.add_argument("names", nargs="*")
    clean.add_argument("--finished", action="store_true",
                       help="delete every map whose items have all settled")
    clean.set_defaults(func=_clean)
    demo = sub.add_parser("demo", help="map a small function over 40 inputs and show results")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (devpool.PoolError, HTCMLError, ValueError) as exc:
        print(f"htcml: {exc}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.root)


if __name__ == "__main__":
    sys.exit(main())

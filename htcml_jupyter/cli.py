"""The ``htcml`` command: the project's pool and the maps on disk."""

from __future__ import annotations

import argparse
import sys

from . import devpool


def _pool(args: argparse.Namespace) -> int:
    if args.action == "up":
        state = devpool.up(num_cpus=args.cpus)
        print(f"pool up ({state.mode}); jobs run as {state.job_user}")
        print(f"client configuration: {state.client_config}")
        return 0
    if args.action == "down":
        print("pool stopped" if devpool.down() else "no pool was up")
        return 0
    state = devpool.running_state()
    if state is None:
        print("pool is down (start it with: htcml pool up)")
        return 1
    print(f"pool up ({state.mode}), client configuration: {state.client_config}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="htcml", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    pool = sub.add_parser("pool", help="start, stop or inspect the project's HTCondor pool")
    pool.add_argument("action", choices=["up", "down", "status"])
    pool.add_argument("--cpus", type=int, default=8, help="slots the pool offers (default 8)")
    pool.set_defaults(func=_pool)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except devpool.PoolError as exc:
        print(f"htcml: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The ``htcml`` command: the project's pool and the maps on disk."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from . import devpool
from .devpool.guard import DECLINED
from .engine.errors import HTCMLError


def _pool(args: argparse.Namespace) -> int:
    isolated = bool(args.isolated)
    name = "isolated pool" if isolated else "pool"
    flag = " --isolated" if isolated else ""
    if args.action == "up":
        state = devpool.up(num_cpus=args.cpus, isolated=isolated, exec_nodes=args.exec_nodes)
        print(f"{name} up ({state.mode}); jobs run as {state.job_user}")
        if isolated:
            nodes = ", ".join(f"{n} (port {state.ports[n]})" for n in state.roots
                              if n != "submit")
            print(f"collector: {state.collector}; execute nodes: {nodes}")
        print(f"client configuration: {state.client_config}")
        _print_slots(state.client_config)
        return 0
    if args.action == "down":
        print(f"{name} stopped" if devpool.down(isolated=isolated) else f"no {name} was up")
        return 0
    running = devpool.running_state(isolated=isolated)
    if running is None:
        print(f"{name} is down (start it with: htcml pool up{flag})")
        return 1
    print(f"{name} up ({running.mode}), client configuration: {running.client_config}")
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


def _env(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from .environment import (
        EnvSource,
        PackProgress,
        export_archive,
        pack_environment,
        size_text,
    )
    from .environment.layout import plan_summary
    from .environment.lean import left_out

    if args.action == "image":
        return _env_image(args)
    started = time.monotonic()
    tty = sys.stderr.isatty()
    shown = [-1]

    def progress(p: PackProgress) -> None:
        share = p.bytes_done / max(p.bytes_total, 1)
        if tty or int(share * 10) > shown[0]:
            shown[0] = int(share * 10)
            start = "\r" if tty else ""
            print(f"{start}packing: {p.files_done}/{p.files_total} files, "
                  f"{size_text(p.bytes_done)} of {size_text(p.bytes_total)} "
                  f"({share:.0%})", end="" if tty else "\n", file=sys.stderr, flush=True)

    source = EnvSource.current().with_choice(include=tuple(args.include),
                                             exclude=tuple(args.exclude),
                                             lean=not args.everything)
    packed = pack_environment(source, progress=progress)
    if tty and not packed.cached:
        print(file=sys.stderr)
    output = Path(args.output).expanduser() if args.output else None
    if output is not None and (output.is_dir() or args.output.endswith("/")):
        output = output / f"env-{packed.digest}.tar.gz"  # OSDF caches by name
    path = export_archive(packed, output) if output is not None else packed.path
    how = (f"reused (packed earlier in {packed.pack_seconds:.1f} s)" if packed.cached
           else f"packed in {packed.pack_seconds:.1f} s")
    print(f"archive: {path.resolve()}")
    print(f"size:    {size_text(packed.size)} ({packed.size} bytes, {packed.files} files, "
          f"Python {packed.python})")
    if source.lean:
        everything = plan_summary(dataclasses.replace(source, lean=False))
        print(f"lean:    {packed.files} of {everything[0]} files, "
              f"{size_text(plan_summary(source)[1])} of {size_text(everything[1])} unpacked; "
              f"left out what only the notebook uses ({', '.join(left_out(source)[:8])}"
              f"{', ...' if len(left_out(source)) > 8 else ''}); --include NAME keeps one, "
              f"--everything keeps all")
    print(f"digest:  {packed.digest} (the start of the archive's SHA-256)")
    print(f"time:    {time.monotonic() - started:.1f} s, {how}")
    print(f"use it:  htc.map(fn, items, environment={str(path.resolve())!r}), or upload "
          f"it and pass its https:// or osdf:// URL")
    return 0


def _env_image(args: argparse.Namespace) -> int:
    """``htcml env image NAME``: an image of the job environment, loadable by podman."""
    from .environment.image import ImageError, build_image

    if not args.name:
        print("htcml env image: name the image, e.g. `htcml env image my-env:v1`",
              file=sys.stderr)
        return 2
    try:
        built = build_image(args.name, base=Path(args.base).expanduser() if args.base else None,
                            output=Path(args.output).expanduser() if args.output else None,
                            say=lambda text: print(text, file=sys.stderr, flush=True))
    except ImageError as exc:
        print(f"htcml: {exc}", file=sys.stderr)
        return 2
    print(f"image:   {built.path} ({built.size / 1e6:.0f} MB, {built.layers} layers, "
          f"{built.seconds:.1f} s)")
    print(f"name:    {built.reference}, Python {built.python}, over {built.base}")
    if args.load:
        from .devpool.execroot import load_image

        state = devpool.running_state(isolated=True)
        if state is None:
            print("htcml: --load needs the isolated pool (htcml pool up --isolated)",
                  file=sys.stderr)
            return 2
        load_image(built.path, [r for n, r in state.roots.items() if n != "submit"])
        print("loaded into the isolated pool's execute nodes")
    else:
        print(f"load:    podman load -i {built.path}  (or docker load -i ...)")
    print(f"sif:     {built.apptainer_command()}")
    print(f"use it:  htc.map(fn, items, container_image={built.container_image!r})")
    return 0


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
    targets = args.names or [i.name for i in list_maps(args.root) if i.problem is None]
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
    pool.add_argument("--cpus", type=int, default=8,
                      help="slots each execute node offers (default 8)")
    pool.add_argument("--isolated", action="store_true",
                      help="the isolated pool: execute nodes that share no files with this "
                           "machine, beside the shared pool (needs root)")
    pool.add_argument("--exec-nodes", type=int, default=None,
                      help="execute nodes of the isolated pool (default: as many as run "
                           "now, at least 1)")
    pool.set_defaults(func=_pool)
    env = sub.add_parser("env", help="pack this Python and its packages for the jobs, or "
                                     "build a container image of them (env image NAME)")
    env.add_argument("action", choices=["pack", "image"])
    env.add_argument("name", nargs="?", default=None,
                     help="env image: the image's NAME[:TAG] (loads as localhost/NAME:TAG)")
    env.add_argument("--base", default=None,
                     help="env image: the image to build on (a `podman save` archive, or a "
                          "root filesystem tarball with glibc); default a Debian 12 minbase "
                          "root made here (needs root)")
    env.add_argument("--load", action="store_true",
                     help="env image: load it into the isolated pool's execute nodes (root)")
    env.add_argument("--output", default=None,
                     help="also put the archive here (a .tar.gz path, or a folder: then it "
                          "is named env-<digest>.tar.gz; default: only the "
                          "cache, $HTCML_HOME/envs); env image: the image tarball "
                          "(default $HTCML_HOME/images/NAME_TAG.tar)")
    env.add_argument("--include", action="append", default=[], metavar="NAME",
                     help="keep a distribution the lean pack leaves out (repeatable), e.g. "
                          "ipython, or a site-packages folder such as torch/include")
    env.add_argument("--everything", action="store_true",
                     help="pack every installed distribution (no lean selection)")
    env.add_argument("--exclude", action="append", default=[], metavar="NAME",
                     help="leave out a package the jobs never use (repeatable), e.g. "
                          "--exclude playwright --exclude jupyterlab")
    env.set_defaults(func=_env)
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
    except devpool.ForeignPoolError as exc:
        print(f"htcml: {exc}", file=sys.stderr)
        return DECLINED
    except (devpool.PoolError, HTCMLError, ValueError) as exc:
        print(f"htcml: {exc}", file=sys.stderr)
        return 2


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.root)


if __name__ == "__main__":
    sys.exit(main())

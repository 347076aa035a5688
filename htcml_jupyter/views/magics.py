"""IPython magics: a thin layer over the Python API.

=====================================  ==========================================
magic                                  Python equivalent
=====================================  ==========================================
``%%htc_map --over xs -o m``           ``m = htc.map(fn, xs); m.panel()``
``%%htc_map --grid g --wait -o r``     ``r = htc.sweep(fn, grid=g).results()``
``%%htc_map --grid s --random 20``     ``htc.sweep(fn, space=s, n_trials=20)``
``%htc_maps``                          ``htc.list_maps()``
``%htc_status NAME``                   ``htc.attach(NAME).status()``
``%htc_attach NAME -o m``              ``m = htc.attach(NAME); m.panel()``
``%htc_cancel NAME``                   ``htc.attach(NAME).cancel()``
``%htc_retry NAME``                    ``htc.attach(NAME).retry()``
``%htc_pool``                          ``htc.pool_resources()``
``%htc_config [KEY=VALUE ...]``        ``c.HTCMagics.KEY = VALUE`` in ipython_config.py
=====================================  ==========================================
"""

from __future__ import annotations

import html
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Bool, Int, Unicode

from ..engine.errors import HTCMLError
from ..engine.options import OptionError, default_of
from ..engine.payload import PickleError
from .cell_parsing import resolve_expression, top_level_functions
from .magic_options import given_options, option_arguments


def _has_widget_frontend(shell: Any) -> bool:
    return "ipykernel" in sys.modules and getattr(shell, "kernel", None) is not None


@magics_class
class HTCMagics(Magics):
    """Map notebook functions over inputs as HTCondor jobs (see ``%%htc_map?``)."""

    request_memory = Unicode(default_of("request_memory"),
                             help="memory per job when --memory is not given").tag(config=True)
    request_cpus = Int(default_of("request_cpus"),
                       help="CPU cores per job when --cpus is not given").tag(config=True)
    request_disk = Unicode(default_of("request_disk"),
                           help="disk per job when --disk is not given").tag(config=True)
    pool = Unicode("", help="pool for new maps ('project', 'local' or a configuration file; "
                   "empty: the usual search)").tag(config=True)
    chunksize = Unicode("auto", help="items per job: a number or 'auto'").tag(config=True)
    environment = Unicode(default_of("environment"),
                          help="how jobs get Python and packages when --environment is not "
                               "given: auto, pack, shared, or an archive path or URL").tag(
        config=True)
    panel = Bool(True, help="show a live progress panel under each map").tag(config=True)

    @property
    def _shell(self) -> Any:
        if self.shell is None:
            raise UsageError("the htcml_jupyter magics need an IPython shell")
        return self.shell

    @property
    def _ns(self) -> dict[str, Any]:
        ns: dict[str, Any] = self._shell.user_ns
        return ns

    # ------------------------------------------------------------------ %%htc_map
    @magic_arguments()
    @argument("--over", metavar="EXPR", help="iterable to map over (a notebook variable)")
    @argument("--grid", metavar="EXPR",
              help="dict of lists: every combination becomes the function's keyword arguments")
    @argument("--random", metavar="N", type=int,
              help="with --grid: a space of distributions (htc.loguniform...), sample N "
                   "trials from it")
    @argument("--repeat", type=int, default=1,
              help="with --grid: run each point this many times (a seed parameter each)")
    @argument("--seed", type=int, default=0, help="with --grid: seed of the random search")
    @argument("--metric", help="with --grid: the metric that ranks trials (best())")
    @argument("--mode", choices=["min", "max"], default="min",
              help="with --grid: whether a lower or higher metric wins")
    @argument("--early-stop", metavar="EXPR",
              help="with --grid: an early-abort policy, e.g. a htc.MedianStopping(...) "
                   "variable")
    @argument("--kwargs", metavar="EXPR", help="dict of constant keyword arguments")
    @argument("--setup", metavar="EXPR",
              help="function run once per job (load a model); its value is passed to each "
                   "call after the item (may be defined in the cell)")
    @argument("--batch-size", type=int, metavar="N",
              help="call the function with lists of up to N items")
    @argument("--fn", metavar="NAME",
              help="the function to map (default: the cell's only top-level def)")
    @argument("--chunksize", help="items per job: a number or 'auto'")
    @argument("--name", help="the map's name (default: function name plus a tag)")
    @argument("--pool", help="'project', 'local' or an HTCondor configuration file")
    @argument("-o", "--output", metavar="VAR",
              help="bind the map handle to VAR at once (with --wait: the results)")
    @argument("--wait", action="store_true", help="block until done and bind the results")
    @argument("--no-panel", action="store_true", help="do not show the progress panel")
    @option_arguments()
    @cell_magic
    def htc_map(self, line: str, cell: str) -> None:
        """Run the cell, then map its function over inputs as HTCondor jobs.

        Example::

            %%htc_map --over texts --gpus 1 --memory 4GB -o emb
            def embed(text):
                ...

        The cell runs in the notebook's namespace first, so its imports and helpers
        exist there too.  The cell returns at once with a live panel; ``-o VAR`` binds
        the map handle (``VAR.results()`` gathers the results), ``--wait`` blocks and
        binds the results instead.
        """
        args = self._parse(self.htc_map, line)
        if bool(args.over) == bool(args.grid):
            raise UsageError("give exactly one of --over EXPR (an iterable) or --grid EXPR "
                             "(a dict of lists)")
        ns = self._ns
        inputs = resolve_expression(args.over or args.grid, ns)
        kwargs = resolve_expression(args.kwargs, ns) if args.kwargs else None
        if kwargs is not None and not isinstance(kwargs, dict):
            raise UsageError(f"--kwargs must name a dict, not a {type(kwargs).__name__}")
        if args.grid and (args.setup or args.batch_size):
            raise UsageError("--setup and --batch-size apply to --over maps, not to --grid "
                             "sweeps (load the model inside the trial function)")
        if args.random is not None and not args.grid:
            raise UsageError("--random N samples the space given with --grid")
        if args.grid and not isinstance(inputs, dict):
            raise UsageError(f"--grid must name a dict of lists, not a "
                             f"{type(inputs).__name__}")
        policy = resolve_expression(args.early_stop, ns) if args.early_stop else None
        function = self._run_cell_for_function(cell, args.fn, skip=args.setup)
        if args.grid:
            m = self._sweep(function, inputs, kwargs, policy, args)
        else:
            m = self._map(function, inputs, kwargs, args)
        if args.output and not args.wait:
            ns[args.output] = m
        self._present(m, args)

    def _parse(self, magic: Callable[..., Any], line: str) -> Any:
        try:
            return parse_argstring(magic, line)
        except UsageError as exc:
            raise UsageError(f"{exc} (see %{magic.__name__}? for the options)") from None
        except SystemExit:  # argparse exits on bad input
            raise UsageError(f"bad arguments {line!r}; see %{magic.__name__}?") from None

    def _run_cell_for_function(self, cell: str, name: str | None,
                               skip: str | None = None) -> Callable[..., Any]:
        if not cell.strip():
            raise UsageError("the cell is empty: write the function to map in it")
        transformed = self._shell.transform_cell(cell)
        found = [f for f in top_level_functions(transformed) if f != skip]
        if name is None:
            if len(found) != 1:
                listed = ", ".join(found) or "none"
                raise UsageError(f"the cell must define exactly one top-level function, or "
                                 f"name one with --fn (found: {listed})")
            name = found[0]
        result = self._shell.run_cell(cell, store_history=False)
        if not result.success:
            raise UsageError("the cell raised an error (shown above); nothing was submitted")
        function = self._ns.get(name)
        if not callable(function):
            raise UsageError(f"--fn {name}: no function of that name exists after the cell ran")
        return function

    def _options(self, args: Any, names: Iterable[str] | None = None) -> dict[str, Any]:
        """The job options: the magics' configured defaults, then those on the line
        (``names``: the options the magic has; all of them by default)."""
        options: dict[str, Any] = {
            "request_cpus": self.request_cpus, "request_memory": self.request_memory,
            "request_disk": self.request_disk, "environment": self.environment,
        }
        options.update(given_options(args, self._ns, names))
        return options

    def _map(self, function: Callable[..., Any], inputs: Any, kwargs: Any, args: Any) -> Any:
        from .. import api as htc

        chunk_text = args.chunksize or self.chunksize
        chunksize: Any = chunk_text if chunk_text == "auto" else None
        if chunksize is None:
            try:
                chunksize = int(chunk_text)
            except ValueError:
                raise UsageError(f"--chunksize must be a number or 'auto', not "
                                 f"{chunk_text!r}") from None
        setup = resolve_expression(args.setup, self._ns) if args.setup else None
        try:
            return htc.map(function, inputs, kwargs=kwargs, name=args.name,
                           chunksize=chunksize, pool=args.pool or self.pool or None,
                           setup=setup, batch_size=args.batch_size, **self._options(args))
        except (OptionError, PickleError, HTCMLError, ValueError, TypeError) as exc:
            raise UsageError(f"nothing was submitted: {exc}") from None

    def _sweep(self, function: Callable[..., Any], space: dict[str, Any], kwargs: Any,
               policy: Any, args: Any) -> Any:
        from .. import api as htc

        grid, random_space = (None, space) if args.random is not None else (space, None)
        try:
            return htc.sweep(function, grid=grid, space=random_space, n_trials=args.random,
                             repeat=args.repeat, seed=args.seed, metric=args.metric,
                             mode=args.mode, early_stop=policy, kwargs=kwargs,
                             name=args.name, pool=args.pool or self.pool or None,
                             **self._options(args))
        except (OptionError, PickleError, HTCMLError, ValueError, TypeError) as exc:
            raise UsageError(f"nothing was submitted: {exc}") from None

    def _present(self, m: Any, args: Any) -> None:
        from .progress import render_text, snapshot

        widgets_ok = self.panel and not args.no_panel and _has_widget_frontend(self.shell)
        panel = m.panel() if widgets_ok else None
        if panel is None and not args.wait:
            print(render_text(snapshot(m)))
        if not args.wait:
            return

        def headline(_counts: dict[str, int]) -> None:
            print(render_text(snapshot(m)).splitlines()[0], flush=True)

        m.wait(progress=headline if panel is None else None)
        if panel is not None:
            panel.update()
        else:
            print(render_text(snapshot(m)))
        results = m.results(errors="return")
        if args.output:
            self._ns[args.output] = results
        m.results()  # raises MapError, shown with the remote traceback, when items failed

    # ------------------------------------------------------------------ line magics
    def _find_map(self, name: str) -> Any:
        from .. import api as htc
        from ..engine.mapping import Map

        candidate = self._ns.get(name)
        if isinstance(candidate, Map):
            return candidate
        try:
            return htc.attach(name)
        except (HTCMLError, ValueError) as exc:
            raise UsageError(str(exc)) from None

    @contextmanager
    def _using_map(self, name: str) -> Iterator[Any]:
        """The map ``name`` for one command; one attached only for it is closed after
        (so a sweep's early-abort watcher is not left running twice)."""
        m = self._find_map(name)
        try:
            yield m
        finally:
            if m is not self._ns.get(name):
                m.close()

    @line_magic
    def htc_maps(self, line: str) -> None:
        """List the maps on disk (``htc.list_maps()``)."""
        from .. import api as htc

        infos = htc.list_maps()
        if not infos:
            print("no maps yet: %%htc_map makes one")
            return
        from IPython.display import display

        from ..api import MAP_COLUMNS, maps_text

        head = "".join(f"<th>{c}</th>" for c in MAP_COLUMNS)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(i.row()[c])}</td>"
                                        for c in MAP_COLUMNS) + "</tr>" for i in infos)
        display({"text/plain": maps_text(infos),
                 "text/html": f"<table><tr>{head}</tr>{rows}</table>"}, raw=True)

    @magic_arguments()
    @argument("name", help="the map's name (or a variable holding a map)")
    @line_magic
    def htc_status(self, line: str) -> None:
        """Item counts, holds and errors of a map (``htc.attach(NAME).status()``)."""
        from .progress import render_text, snapshot

        args = self._parse(self.htc_status, line)
        with self._using_map(args.name) as m:
            print(render_text(snapshot(m)))

    @magic_arguments()
    @argument("name", help="the map's name")
    @argument("-o", "--output", metavar="VAR", help="bind the map handle to VAR")
    @argument("--no-panel", action="store_true", help="do not show the progress panel")
    @line_magic
    def htc_attach(self, line: str) -> None:
        """Pick up a map again, e.g. after a kernel restart (``htc.attach(NAME)``)."""
        args = self._parse(self.htc_attach, line)
        m = self._find_map(args.name)
        if args.output:
            self._ns[args.output] = m
        args.wait = False
        self._present(m, args)

    @magic_arguments()
    @argument("name", help="the map's name (or a variable holding a map)")
    @line_magic
    def htc_cancel(self, line: str) -> None:
        """Remove a map's unfinished jobs; finished results stay (``m.cancel()``)."""
        with self._using_map(self._parse(self.htc_cancel, line).name) as m:
            m.cancel()
            print(f"cancelled the unfinished jobs of {m.name}")

    @magic_arguments()
    @argument("name", help="the map's name (or a variable holding a map)")
    @line_magic
    def htc_retry(self, line: str) -> None:
        """Run a map's failed, held and removed items again (``m.retry()``)."""
        with self._using_map(self._parse(self.htc_retry, line).name) as m:
            items = m.retry()
            print(f"retrying {len(items)} item{'s' if len(items) != 1 else ''} of {m.name}"
                  if items else f"nothing to retry in {m.name}")

    @line_magic
    def htc_pool(self, line: str) -> None:
        """The pool new maps use: slots, CPUs, memory and GPUs, free and total."""
        from ..api import pool_resources

        try:
            print(pool_resources(self.pool or None))
        except HTCMLError as exc:
            raise UsageError(str(exc)) from None

    @line_magic
    def htc_config(self, line: str) -> None:
        """Show the magics' defaults, or set them: ``%htc_config request_memory=4GB``.

        The same settings go in ipython_config.py as ``c.HTCMagics.request_memory``.
        """
        names = sorted(self.trait_names(config=True))
        line = line.strip()
        if not line:
            for name in names:
                trait = self.traits()[name]
                print(f"{name:<15} = {getattr(self, name)!r:<12}  {trait.help}")
            return
        for pair in line.split():
            key, sep, raw = pair.partition("=")
            if not sep or key not in names:
                raise UsageError(f"use KEY=VALUE with KEY one of {', '.join(names)}")
            trait = self.traits()[key]
            try:
                value: Any = raw
                if isinstance(trait, Int):
                    value = int(raw)
                elif isinstance(trait, Bool):
                    value = raw.lower() in ("1", "true", "yes", "on")
                setattr(self, key, value)
            except Exception as exc:
                raise UsageError(f"{key}: {exc}") from None
            print(f"{key} = {getattr(self, key)!r}")

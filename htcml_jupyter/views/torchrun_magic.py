"""``%%htc_torchrun``: a cell's function as a multi-node torchrun.

=============================================  =======================================
magic                                          Python equivalent
=============================================  =======================================
``%%htc_torchrun --nodes 2 --gpus 1 -o run``   ``run = htc.torchrun(fn, nodes=2,
                                               request_gpus=1); run.panel()``
``%%htc_torchrun --nodes 2 --wait -o out``     ``out = htc.torchrun(fn,
                                               nodes=2).results()``
=============================================  =======================================
"""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from ..engine.errors import HTCMLError
from ..engine.options import OptionError
from ..engine.payload import PickleError
from .cell_parsing import resolve_expression
from .magic_options import option_arguments
from .magics import HTCMagics, _has_widget_frontend

#: The job options ``%%htc_torchrun`` has as flags (``--requirements`` is its own: a
#: notebook variable holding the expression).
RUN_OPTIONS = ("request_cpus", "request_memory", "request_disk", "request_gpus",
               "gpus_minimum_memory", "gpus_minimum_capability", "container_image",
               "input_files", "environment")


@magics_class
class TorchrunMagics(HTCMagics):
    """``%%htc_torchrun`` (its defaults are those of ``%%htc_map``: ``c.HTCMagics``)."""

    @magic_arguments()
    @argument("--nodes", type=int, default=2, help="how many nodes (jobs); default 2")
    @argument("--procs-per-node", type=int, default=1,
              help="processes per node (torchrun --nproc-per-node); default 1")
    @argument("--kwargs", metavar="EXPR", help="dict of keyword arguments of every call")
    @argument("--fn", metavar="NAME",
              help="the function to run (default: the cell's only top-level def)")
    @argument("--requirements", metavar="EXPR",
              help="a ClassAd expression every node's machine must satisfy (a string "
                   "variable)")
    @argument("--join-timeout", type=float,
              help="seconds nodes wait for each other (default 600)")
    @argument("--name", help="the run's name (default: function name plus a tag)")
    @argument("--pool", help="'project' or an HTCondor configuration file")
    @argument("-o", "--output", metavar="VAR",
              help="bind the run handle to VAR at once (with --wait: the results)")
    @argument("--wait", action="store_true",
              help="block until done and bind the per-rank results")
    @argument("--no-panel", action="store_true", help="do not show the live panel")
    @option_arguments(RUN_OPTIONS, title="node options (htc.torchrun keyword options)")
    @cell_magic
    def htc_torchrun(self, line: str, cell: str) -> None:
        """Run the cell, then run its function on every process of a multi-node torchrun.

        Example::

            %%htc_torchrun --nodes 2 --gpus 1 -o run
            def train(epochs=3):
                import torch.distributed as dist
                dist.init_process_group("nccl")
                ...

        Each node is one HTCondor job; every process calls the function with
        ``--kwargs``.  The cell returns at once with a live panel (nodes, rendezvous
        address, rank 0's reports); ``run.results()`` gives one value per global rank.
        """
        args = self._parse(self.htc_torchrun, line)
        ns = self._ns
        kwargs = resolve_expression(args.kwargs, ns) if args.kwargs else None
        if kwargs is not None and not isinstance(kwargs, dict):
            raise UsageError(f"--kwargs must name a dict, not a {type(kwargs).__name__}")
        requirements = resolve_expression(args.requirements, ns) if args.requirements else None
        if requirements is not None and not isinstance(requirements, str):
            raise UsageError("--requirements must name a string (a ClassAd expression)")
        function = self._run_cell_for_function(cell, args.fn)
        options = self._options(args, RUN_OPTIONS)
        if requirements is not None:
            options["requirements"] = requirements
        if args.join_timeout is not None:
            options["join_timeout"] = args.join_timeout
        from ..multinode import torchrun

        try:
            run = torchrun(function, nodes=args.nodes, procs_per_node=args.procs_per_node,
                           kwargs=kwargs, name=args.name, pool=args.pool or self.pool or None,
                           **options)
        except (OptionError, PickleError, HTCMLError, ValueError, TypeError) as exc:
            raise UsageError(f"nothing was submitted: {exc}") from None
        if args.output and not args.wait:
            ns[args.output] = run
        self._show_run(run, args)

    def _show_run(self, run: Any, args: Any) -> None:
        from .torchrun_panel import render_text, run_snapshot

        widgets_ok = self.panel and not args.no_panel and _has_widget_frontend(self.shell)
        panel = run.panel() if widgets_ok else None
        if panel is None and not args.wait:
            print(render_text(run_snapshot(run)))
        if not args.wait:
            return
        run.wait()
        if panel is not None:
            panel.update()
        else:
            print(render_text(run_snapshot(run)))
        results = run.results()  # raises TorchrunError, shown with the remote traceback
        if args.output:
            self._ns[args.output] = results

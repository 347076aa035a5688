"""One process of an ``htc.torchrun`` node, started by torchrun: standard library only.

Usage (what ``torchrun_launch.py`` hands to torchrun)::

    python torchrun_worker.py NODE PROCS FUNCTION_FILE INPUT_FILE

Runs the runner on this process's one item (``NODE * PROCS + LOCAL_RANK``) with its own
input and outcome file (``outcome-local-L.pkl``), its stdout and stderr in
``torchrun-rank-L.out|err``, and its global rank in ``torchrun-local-L.json``; the
node merges them when torchrun ends.
"""

from __future__ import annotations

import json
import os
import pickle
import sys

if __package__:  # imported from the installed package
    from . import runner, wire
else:  # run as a script in the job's folder, next to the job side's archive
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "jobside.pyz"))
    import runner  # type: ignore[no-redef]
    import wire  # type: ignore[no-redef]


def worker(node: int, procs: int, function_file: str, input_file: str) -> int:
    """One torchrun process: the runner on this process's one item."""
    local = int(os.environ["LOCAL_RANK"])
    rank = int(os.environ["RANK"])
    item = node * procs + local
    for suffix, fd in (("out", 1), ("err", 2)):
        target = os.open(f"torchrun-rank-{local}.{suffix}",
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    with open(f"torchrun-local-{local}.json", "w") as f:
        json.dump({"rank": rank, "local_rank": local, "item": item}, f)
    with open(input_file, "rb") as f:
        header = runner.read_header(f)
    own_input = f"input-local-{local}.pkl"
    header.pop("span", None)
    runner.write_payload(own_input, {**header, "items": [item]},
                         pickle.dumps([(item, rank)], protocol=pickle.HIGHEST_PROTOCOL))
    # A rank that fails because a peer was evicted must keep its saved checkpoints for
    # the next rendezvous: the node clears them itself once every rank has finished.
    code = runner.run(function_file, own_input, f"outcome-local-{local}.pkl",
                      clear_checkpoints=False)
    if code == wire.EXIT_CHECKPOINT:
        open("torchrun-spool", "w").close()
    return code


if __name__ == "__main__":
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]))

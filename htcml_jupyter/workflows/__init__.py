"""Workflows that outlive the notebook: HTCondor runs them, not this process.

:mod:`.watch` applies a sweep's early-abort policy from a local-universe job on the
submit host (:mod:`.watcher_job` submits it); :mod:`.stages` and :mod:`.dag` chain
maps into a DAGMan workflow (``htc.chain(htc.stage(train, ...), htc.stage(evaluate),
htc.stage(keep_best, over="all"))``); :mod:`.node` is what DAGMan runs between stages.
"""

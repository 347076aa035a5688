"""Code that runs on the execute node, shipped with every job as one file, ``jobside.pyz``
(:mod:`.archive` builds it).

Standard library only (plus cloudpickle for the payload and HTCondor's pure-Python
chirp client, both inside that file): an execute node needs nothing of this package
installed.  ``runner.py`` runs the items, ``job.py`` is the API a mapped function
calls (``report``, ``checkpoint``, ``device``), ``wire.py`` holds what both sides
agree on.
"""

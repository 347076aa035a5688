"""The engine: a map's state, folder, payload, options, chunking and errors, and the
:class:`~htcml_jupyter.engine.mapping.Map` handle built on them.  Runs in the notebook
(or script); never on the execute node."""

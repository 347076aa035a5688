"""What a person sees: magics, live panels, progress text and curves.  Views only
render; every piece of logic they show lives in the API and the engine."""

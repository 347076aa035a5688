"""Where a map's jobs run, behind one protocol (:mod:`.protocol`): an HTCondor pool
(:mod:`.condor`) or local processes (:mod:`.local`); :mod:`.pools` picks one."""

"""Lightning callbacks mmtrain adds to every run (exact resume, resume points, SIGTERM/Ctrl-C,
gradient audit, skip ledger, export) and the atomic checkpoint IO they share."""

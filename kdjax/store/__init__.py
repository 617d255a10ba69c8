"""What a run keeps on disk and how it is trusted: orbax checkpoints, the lock that
keeps one process per run directory, and content fingerprints.
"""

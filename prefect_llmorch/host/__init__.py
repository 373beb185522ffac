"""This process on this machine: the embedded Prefect server and what a terminal's Ctrl-C does.

No flows here; `engine/` and `flows/` import it, never the other way round.
"""

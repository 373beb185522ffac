"""This process on this machine: the embedded Prefect server, what a terminal's Ctrl-C does,
and the machine's GPU devices (`devices.py`).

No flows here; `engine/` and `flows/` import it, never the other way round.
"""

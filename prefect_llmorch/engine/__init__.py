"""Execution on Prefect: the task runner, the compiler (Call -> Prefect task), the guard, the Dask runner (the worker processes they use: `procs/`)."""

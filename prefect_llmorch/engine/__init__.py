"""Execution on Prefect: worker processes, the task runner, the compiler (Call -> Prefect task), the Dask runner."""

"""The processes that run compute calls, one call per process at a time. No Prefect.

`pool.py`: the `ProcessorPool` protocol the compiler and the task runner need of a pool, and
its vocabulary (`Outcome`, `Cancel`, the errors a call can end with); `workers.py`: the local
pool of pre-warmed worker processes (`WorkerPool`), like `concurrent.futures.process` but a
timeout or a dead worker fails only its call. `engine/` drives them from Prefect's task runs.
"""

"""Scheduling, pure: coordination policies and the Coordinator, the simulator. No Prefect, no I/O."""

"""The Prefect flows: one execution pipeline for llmorch-run and llmorch-ask, the planner task, recovery, progress, deployable flows."""

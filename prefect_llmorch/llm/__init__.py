"""The LLM side without Prefect: the OpenAI-compatible client."""

"""The agent runtime: tool-calling LLM steps (`agent_loop`) and the providers they talk to."""

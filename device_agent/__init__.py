"""device_agent."""

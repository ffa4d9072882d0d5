"""The agents a deployment serves (AGENTS): each a model, a prompt, a tool list and limits."""

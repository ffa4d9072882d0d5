"""The OpenAI-compatible door (/v1): Chat Completions and Responses over the same turns as /chat."""

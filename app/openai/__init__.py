"""The OpenAI-compatible fine-tuning API under /v1."""

"""Serving trained models: OpenAI-compatible /v1/models, /v1/chat/completions and /v1/completions (docs/serving.md)."""

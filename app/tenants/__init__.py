"""Tenants: API keys, authentication, limits, admin and usage."""

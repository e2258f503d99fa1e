"""finetune-service: the HTTP API, its data model and the ftctl CLI (no training code lives here)."""

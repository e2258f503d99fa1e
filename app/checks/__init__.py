"""POST /jobs/validate and every check a job passes before it is queued: data, tokens, templates, estimates."""

"""Jobs: submit, list, cancel, delete, artifacts, webhooks, the reconciler and retention."""

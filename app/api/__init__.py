"""HTTP routes, one module per resource, each with its service functions beside it."""

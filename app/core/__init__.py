"""What every domain stands on: settings, the database session, errors, security middleware, shared schema types."""

"""stampede_api package."""

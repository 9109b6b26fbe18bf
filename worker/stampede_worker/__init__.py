"""stampede_worker package."""

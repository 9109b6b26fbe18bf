"""stampede_operator package."""

"""regionrank extractors package."""

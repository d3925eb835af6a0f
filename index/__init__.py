"""regionrank index package."""

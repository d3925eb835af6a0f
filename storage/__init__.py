"""regionrank storage package."""

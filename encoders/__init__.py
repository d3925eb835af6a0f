"""regionrank encoders package."""

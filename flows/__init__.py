"""regionrank flows package."""

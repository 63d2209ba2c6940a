"""gradq core."""

"""gradq workers."""

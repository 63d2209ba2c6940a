"""gradq api."""

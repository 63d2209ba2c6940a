"""gradq db."""

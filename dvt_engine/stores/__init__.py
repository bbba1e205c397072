"""State store implementations that ship with the core (the in-memory store)."""

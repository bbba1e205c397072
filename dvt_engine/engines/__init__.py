"""Engines that ship with the core (the in-process reference engine)."""

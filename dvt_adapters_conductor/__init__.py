"""Conductor engine adapter for dvt: plans run as Conductor workflows on a real server."""

"""Executors that run a plan: in-process (default) and Ray."""

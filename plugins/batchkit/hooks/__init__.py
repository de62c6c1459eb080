"""Hooks: connections and I/O, built on the providers' hooks."""

"""Thin operators: they read the task context and hand hooks to batchkit's plain functions."""

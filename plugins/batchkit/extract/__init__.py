"""Extraction logic as plain functions: pagination styles, retry classification, client-side rate limits."""

"""Ingest: what apps send, checked, sampled, redacted, described, and written durably."""

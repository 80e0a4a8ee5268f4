"""Notices: what a decision tells the account (templates) and how it gets there (channels)."""

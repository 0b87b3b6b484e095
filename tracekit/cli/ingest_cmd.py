"""Placeholder: the owner of this command fills it in."""

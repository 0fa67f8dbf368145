"""The dual-network trainer base and the pieces it composes (networks, checkpoints, logging)."""

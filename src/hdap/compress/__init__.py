"""Compression: the search space, the joint prune + mixed-precision search, and applying its result."""

"""Watching and steering a run from another process: the control socket and attach."""

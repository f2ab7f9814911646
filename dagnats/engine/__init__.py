"""The engine: the loop that drives the pure core, and the timer service."""

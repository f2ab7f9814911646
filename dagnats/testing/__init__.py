"""In-memory implementations of `dagnats.ports`, for tests of the engine and workers without a server."""

from .store import MemoryBeat, MemoryStore

__all__ = ["MemoryBeat", "MemoryStore"]

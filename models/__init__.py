"""hybridserve models package."""

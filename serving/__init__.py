"""hybridserve serving package."""

"""hybridserve tuning package."""

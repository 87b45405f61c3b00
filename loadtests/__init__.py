"""hybridserve loadtests package."""

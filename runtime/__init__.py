"""hierfedlora.runtime."""

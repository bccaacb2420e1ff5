"""hierfedlora.validation."""

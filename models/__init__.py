"""hierfedlora.models."""

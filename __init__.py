"""hierfedlora: plan and run hierarchical federated LoRA fine-tuning on heterogeneous devices.

Subpackages: ``hierfedlora.planner`` (no torch), ``hierfedlora.models``,
``hierfedlora.runtime`` and ``hierfedlora.validation``. See the README for a tour.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]

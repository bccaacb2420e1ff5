"""hierfedlora.models: load pretrained models offline, put peft LoRA on the top d layers, keep LoRA state
per layer, and measure the per-layer costs the planner works from.

- :mod:`~hierfedlora.models.catalog`: :class:`ModelSpec`, :func:`load_base_model`, :func:`num_layers`,
  :func:`model_sha256`.
- :mod:`~hierfedlora.models.lora`: :class:`AdaptedModel` (one base model serving every depth),
  :func:`load_adapted_model`, :func:`attach_lora`, :func:`lora_config`.
- :mod:`~hierfedlora.models.adapters`: :data:`AdapterState` keyed ``layers.{l}.{module}.lora_A|lora_B``
  and ``head.{param}``; get, set, seeded init, bytes.
- :mod:`~hierfedlora.models.profiling`: :func:`measure_cost_model` -> ``planner.types.CostModel``.

transformers and peft are imported only when a model is loaded or adapted.
"""

from hierfedlora.models.adapters import (
    AdapterState,
    adapter_keys,
    adapter_parameters,
    get_adapter_state,
    initial_adapter_state,
    layer_of,
    lora_layers,
    set_adapter_state,
    state_bytes,
)
from hierfedlora.models.catalog import (
    DEFAULT_MODEL,
    ModelSpec,
    find_layers,
    head_names,
    load_base_model,
    model_sha256,
    num_layers,
    resolve_model_dir,
)
from hierfedlora.models.lora import (
    AdaptedModel,
    attach_lora,
    check_depth,
    enable_lora_layers,
    load_adapted_model,
    lora_config,
)
from hierfedlora.models.profiling import measure_cost_model, measure_step_times_s

__all__ = [
    "DEFAULT_MODEL",
    "AdaptedModel",
    "AdapterState",
    "ModelSpec",
    "adapter_keys",
    "adapter_parameters",
    "attach_lora",
    "check_depth",
    "enable_lora_layers",
    "find_layers",
    "get_adapter_state",
    "head_names",
    "initial_adapter_state",
    "layer_of",
    "load_adapted_model",
    "load_base_model",
    "lora_config",
    "lora_layers",
    "measure_cost_model",
    "measure_step_times_s",
    "model_sha256",
    "num_layers",
    "resolve_model_dir",
    "set_adapter_state",
    "state_bytes",
]

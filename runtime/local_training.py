"""Local training of one simulated device, and evaluation of an adapter state.

A device is its sample indices; its model is the run's one :class:`AdaptedModel` with the
device's adapter state loaded. ``train_device`` runs ``local_steps`` optimizer steps (AdamW,
or plain SGD as in FedAvg) from the group's state and returns the device's new state;
randomness (batch order, dropout) comes from a seed derived from ``(run seed, global round,
group, intra round, device)``, so a resumed run replays exactly what an uninterrupted one does,
without saving RNG state.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from hierfedlora.models.adapters import AdapterState
from hierfedlora.models.lora import AdaptedModel
from hierfedlora.runtime.data import device_batches
from hierfedlora.runtime.forward import Forward
from hierfedlora.runtime.memory import release_freed_memory

__all__ = ["DeviceUpdate", "derive_seed", "evaluate", "train_device"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DeviceUpdate:
    """What one device returns from a local round: its state, mean loss and step seconds on this host."""

    state: AdapterState
    mean_loss: float
    mean_step_s: float


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across runs and platforms (numpy SeedSequence)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def train_device(
    model: AdaptedModel,
    forward: Forward,
    start_state: AdapterState,
    indices: torch.Tensor,
    *,
    local_steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    optimizer: str = "adamw",
    train_lora_a: bool = True,
) -> DeviceUpdate:
    """Run ``local_steps`` optimizer steps (``"adamw"`` or plain ``"sgd"``) of one device from ``start_state``.

    The model must already be at the group's depth; ``start_state`` holds exactly that
    depth's keys. Dropout draws from torch's global generator inside a ``fork_rng`` scope
    seeded with ``seed``, so the caller's random state is untouched. ``train_lora_a=False`` leaves every
    ``lora_A`` out of the optimizer, so it returns unchanged, bit for bit (FFA-LoRA).
    """
    model.set_adapter_state(start_state)
    parameters = [p for k, p in model.trainable_parameters().items() if train_lora_a or not k.endswith("lora_A")]
    step_rule: torch.optim.Optimizer = (
        torch.optim.SGD(parameters, lr=learning_rate)
        if optimizer == "sgd"
        else torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
    )
    generator = torch.Generator().manual_seed(seed)
    batches = device_batches(indices, batch_size, generator, num_batches=local_steps)
    losses: list[float] = []
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for batch in batches:
            step_rule.zero_grad(set_to_none=True)
            loss = forward.loss(batch)
            loss.backward()
            step_rule.step()
            losses.append(float(loss.detach()))
    elapsed = time.perf_counter() - started
    return DeviceUpdate(
        state=model.get_adapter_state(),
        mean_loss=sum(losses) / len(losses),
        mean_step_s=elapsed / len(losses),
    )


def evaluate(forward: Forward, labels: torch.Tensor, indices: torch.Tensor, *, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the model (at its loaded state) on ``indices``.

    Runs under ``torch.inference_mode`` (no autograd bookkeeping); a prefix cache computes the
    states it keeps outside it, so training can use them afterwards.
    """
    total_loss, correct = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(indices), batch_size):
            batch = indices[start : start + batch_size]
            logits = forward.logits(batch)
            target = labels[batch]
            total_loss += float(torch.nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == target).sum())
            del logits
            # each batch is wider than the last (rows shortest first): its tensors fit no freed hole (runtime.memory)
            release_freed_memory()
    return total_loss / len(indices), correct / len(indices)

"""``RunOptions``: how a plan is executed (training hyperparameters, evaluation, clock, model).

Examples
--------
>>> RunOptions(rounds=3).learning_rate
0.002
>>> RunOptions(rounds=0)
Traceback (most recent call last):
...
hierfedlora.planner.errors.InvalidInputError: rounds must be an integer >= 1; got 0
"""

from __future__ import annotations

import dataclasses

from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.planner.rules import (
    FINITE_NON_NEGATIVE,
    FINITE_POSITIVE,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    OPTIONAL_FINITE_POSITIVE,
    POSITIVE_INT,
    Rule,
    check_fields,
)
from hierfedlora.planner.types import SCHEMA_RULE, SCHEMA_VERSION

__all__ = ["RUN_OPTION_RULES", "RunOptions"]

RUN_OPTION_RULES: dict[str, Rule] = {
    "rounds": POSITIVE_INT,
    "learning_rate": FINITE_POSITIVE,
    "optimizer": Rule("'adamw' or 'sgd'", lambda v: v in ("adamw", "sgd"), ("adam", "")),
    "model": NON_EMPTY_STRING,
    "lora_rank": POSITIVE_INT,
    "lora_alpha": FINITE_POSITIVE,
    "max_seq_len": POSITIVE_INT,
    "eval_samples": POSITIVE_INT,
    "eval_batch_size": POSITIVE_INT,
    "use_prefix_cache": Rule("true or false", lambda v: isinstance(v, bool), (1, "yes")),
    "evaluate_groups": Rule("true or false", lambda v: isinstance(v, bool), (1, "yes")),
    "clock_noise": FINITE_NON_NEGATIVE,
    "backhaul_mbps": FINITE_POSITIVE,
    "server_ingress_mbps": OPTIONAL_FINITE_POSITIVE,
    "intra_latency_s": FINITE_NON_NEGATIVE,
    "global_latency_s": FINITE_NON_NEGATIVE,
    "seed": NON_NEGATIVE_INT,
    "schema_version": SCHEMA_RULE,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """How to execute a plan.

    Parameters
    ----------
    rounds : int
        Global rounds to run (a resumed run stops at the same total).
    learning_rate : float
        Learning rate of the LoRA adapters and the head. Every device starts each
        intra-group round with a fresh optimizer (no optimizer state travels or persists).
    optimizer : {"adamw", "sgd"}
        The local optimizer: AdamW (weight decay 0) or plain SGD (FedAvg's local rule).
    model : str
        ``"default"`` (the packaged all-MiniLM-L6-v2) or a local Hugging Face model folder.
    lora_rank, lora_alpha : LoRA rank r and scaling alpha.
    max_seq_len : int
        Tokens per sample (padded or truncated).
    eval_samples, eval_batch_size : int
        Size of the fixed, seeded evaluation subset of the fleet's test split, and its batch.
    use_prefix_cache : bool
        Train the top ``d`` layers on cached frozen-prefix hidden states (exact; faster).
    evaluate_groups : bool
        Also evaluate every group's model each round (``GroupRoundResult.accuracy``); off, only
        the merged global model is evaluated (plans with many groups run much faster).
    clock_noise : float
        Sigma of mean-one lognormal noise on every simulated local step (0: the cost model exactly).
    backhaul_mbps, server_ingress_mbps, intra_latency_s, global_latency_s : float
        The network the simulated clock charges; defaults equal ``PlanningProblem``'s
        (``server_ingress_mbps`` ``None``: the server link never limits).
    seed : int
        Seeds batches, dropout, the head initialisation, the evaluation subset and clock noise.
    """

    rounds: int
    learning_rate: float = 2e-3
    optimizer: str = "adamw"
    model: str = "default"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    max_seq_len: int = 64
    eval_samples: int = 512
    eval_batch_size: int = 128
    use_prefix_cache: bool = True
    evaluate_groups: bool = True
    clock_noise: float = 0.0
    backhaul_mbps: float = 20.0
    server_ingress_mbps: float | None = None
    intra_latency_s: float = 0.05
    global_latency_s: float = 1.0
    seed: int = 0
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        issues = check_fields(self, RUN_OPTION_RULES)
        if issues:
            raise InvalidInputError(issues)

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

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.rules import (
    FINITE_NON_NEGATIVE,
    FINITE_POSITIVE,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    OPTIONAL_FINITE_POSITIVE,
    POSITIVE_INT,
    Rule,
    check_fields,
    check_limits,
)
from hierfedlora.planner.types import AGGREGATION_RULES as RULE_NAMES  # the same names, without torch
from hierfedlora.planner.types import SCHEMA_RULE, SCHEMA_VERSION, CostModel

__all__ = ["RUN_OPTION_LIMITS", "RUN_OPTION_RULES", "RunOptions", "cost_mismatches"]

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
    "prefix_cache_max_mib": NON_NEGATIVE_INT,
    "batched_devices": POSITIVE_INT,
    "batch_memory_mib": POSITIVE_INT,
    "pack_tokens": Rule("true or false", lambda v: isinstance(v, bool), (1, "yes")),
    "evaluate_groups": Rule("true or false", lambda v: isinstance(v, bool), (1, "yes")),
    "evaluate_intra_rounds": Rule("true or false", lambda v: isinstance(v, bool), (1, "yes")),
    "clock_noise": FINITE_NON_NEGATIVE,
    "backhaul_mbps": FINITE_POSITIVE,
    "server_ingress_mbps": OPTIONAL_FINITE_POSITIVE,
    "intra_latency_s": FINITE_NON_NEGATIVE,
    "global_latency_s": FINITE_NON_NEGATIVE,
    "seed": NON_NEGATIVE_INT,
    "aggregation": Rule(f"one of {', '.join(RULE_NAMES)}", lambda v: v in RULE_NAMES, ("fedprox", "")),
    "hetlora_prune_gamma": Rule(
        "a number in [0, 1)",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1,
        (1.0, -0.1, float("nan"), "x"),
    ),
    "schema_version": SCHEMA_RULE,
}


RUN_OPTION_LIMITS: dict[str, float] = {
    "rounds": 10**6,
    "learning_rate": 10.0,
    "lora_rank": 2**16,
    "lora_alpha": 1e6,
    "max_seq_len": 2**24,
    "eval_samples": 10**12,
    "eval_batch_size": 2**20,
    "prefix_cache_max_mib": 2**30,
    "batched_devices": 10**6,
    "batch_memory_mib": 2**30,
    "clock_noise": 10.0,
    "backhaul_mbps": 1e7,
    "server_ingress_mbps": 1e7,
    "intra_latency_s": 1e4,
    "global_latency_s": 1e4,
    "seed": 2**31 - 1,
}
"""Upper bounds of :data:`RUN_OPTION_RULES` fields (the planning problem's for the network): a 20-digit LoRA rank
reached torch (exit 70), a learning rate of 1e20 trained to a NaN loss."""


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
        Train the top ``d`` layers on cached frozen-prefix hidden states (exact; faster). At full
        depth the plain forward runs (the prefix is only the embeddings: nothing worth caching).
    prefix_cache_max_mib : int
        Bound on the cache's states in MiB (a row costs ``seq_len * hidden * 4`` bytes per depth
        in use: 48 KiB for the packaged model at seq 32, so 256 MiB hold 5,461 rows). When full,
        depths still in turn share it evenly and keep the same rows round after round; a depth no
        longer in turn (e.g. after a re-plan) is evicted; rows that do not fit are recomputed each
        time they are used: exact either way, only slower.
    batched_devices : int
        Devices of a group that train at once as one batched computation (``runtime.batched_training``),
        at most; ``batch_memory_mib`` caps it further. The same math as one device after another, other
        rounding: states agree to 1e-5, not bit for bit, and a run is exact to itself (a resumed run
        equals the uninterrupted one bit for bit). 1 trains one device after another (the sequential
        reference path, which the Ray and Flower executors run).
    batch_memory_mib : int
        Activation memory a batched chunk may keep by the cost model's estimate (with its activation
        bytes, it caps the devices per chunk; CLI ``--batch-memory-mib``). The process's resident set
        grows by about twice this at a chunk's peak (the C allocator's free pages between live
        activations; ``runtime.memory``). The default 160 and the cache's 256 keep an 80-device
        planned round of the packaged model at seq 32 under 1.5 GB.
    pack_tokens : bool
        In batched chunks, the frozen linear layers of the trained layers compute the real tokens of a
        step only, not its padding (``runtime.token_packing``; CLI ``--no-token-packing`` turns it off).
        The same values: bit for bit where the BLAS computes a row alike in calls of any size (this
        project's host), to rounding elsewhere. Used only where a probe finds the model's logits
        unchanged by it.
    evaluate_groups : bool
        Also evaluate every group's model each round (``GroupRoundResult.accuracy``); off, only
        the merged global model is evaluated (plans with many groups run much faster).
    evaluate_intra_rounds : bool
        Also evaluate, as an observer, the global model the server would hold after each
        intra-group round but the last (``RoundReport.intra_evals``; defined in
        ``planner.intra_evals``): the run's rule merges the groups' current states, timed when such
        a cut round would have ended. Not charged to the clock and without effect on training;
        each costs one evaluation. Off by default.
    clock_noise : float
        Sigma of mean-one lognormal noise on every simulated local step (0: the cost model exactly).
    backhaul_mbps, server_ingress_mbps, intra_latency_s, global_latency_s : float
        The network the simulated clock charges; defaults equal ``PlanningProblem``'s
        (``server_ingress_mbps`` ``None``: the server link never limits).
    seed : int
        Seeds batches, dropout, the head initialisation, the evaluation subset and clock noise.
    aggregation : str
        The aggregation rule inside groups and across them (``runtime.aggregation_rules``): ``fedavg``,
        ``ffa``, ``fedex``, ``flora``, ``lora-fair`` or ``hetlora``. Rules that change the base weights
        (``fedex``, ``flora``) train without the frozen-prefix cache (its cached states would go stale).
    hetlora_prune_gamma : float
        Under ``hetlora``, a group drops its last rank component after a round when that component
        carries less than ``1 - gamma`` of its modules' norm (``runtime.rank_pruning``); 0 prunes
        one component every round.
    """

    rounds: int
    learning_rate: float = 2e-3
    optimizer: str = "adamw"
    model: str = "default"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    max_seq_len: int = 64
    eval_samples: int = 512
    eval_batch_size: int = 256
    use_prefix_cache: bool = True
    prefix_cache_max_mib: int = 256
    batched_devices: int = 64
    batch_memory_mib: int = 160
    pack_tokens: bool = True
    evaluate_groups: bool = True
    evaluate_intra_rounds: bool = False
    clock_noise: float = 0.0
    backhaul_mbps: float = 20.0
    server_ingress_mbps: float | None = None
    intra_latency_s: float = 0.05
    global_latency_s: float = 1.0
    seed: int = 0
    aggregation: str = "fedavg"
    hetlora_prune_gamma: float = 0.99
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        issues = check_fields(self, RUN_OPTION_RULES)
        issues += check_limits(self, RUN_OPTION_LIMITS, RUN_OPTION_RULES, broken=frozenset(i.path for i in issues))
        if issues:
            raise InvalidInputError(issues)


def cost_mismatches(options: RunOptions, batch_size: int, cost_model: CostModel) -> Issue | None:
    """Where the run would train something other than what the cost model prices (its simulated clock).

    Compares the sequence length and LoRA rank of ``options`` and the plan's ``batch_size`` with the
    cost model's ``seq_len``, ``lora_rank`` and ``batch_size``. Returns one issue naming every field
    that differs (``None`` if none does), e.g. ``max_seq_len, lora_rank must be the cost model's
    seq_len 64, lora_rank 8; got (32, 4) (pass --allow-cost-mismatch ...)``.
    """
    pairs = (
        ("max_seq_len", options.max_seq_len, "seq_len", cost_model.seq_len),
        ("batch_size", batch_size, "batch_size", cost_model.batch_size),
        ("lora_rank", options.lora_rank, "lora_rank", cost_model.lora_rank),
    )
    differ = [pair for pair in pairs if pair[1] != pair[3]]
    if not differ:
        return None
    return Issue(
        ", ".join(name for name, *_ in differ),
        "the cost model's " + ", ".join(f"{field} {priced}" for *_, field, priced in differ),
        tuple(value for _, value, *_ in differ) if len(differ) > 1 else differ[0][1],
        "pass --allow-cost-mismatch to run anyway: the simulated clock then prices another computation",
    )

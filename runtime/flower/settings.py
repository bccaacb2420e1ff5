"""``AppSettings``: the Flower App's run config (``[tool.flwr.app.config]``), parsed and checked once.

Flower config values are scalars, so "absent" is spelled ``""`` (files, the aggregation rule) or ``0``
(sample caps, re-plan period) in the TOML; here they become ``None``. Keys use Flower's dashes
(``local-steps``); fields use underscores. Unknown keys are refused with a "did you mean" hint, like every
hierfedlora input.

Examples
--------
>>> AppSettings.from_run_config({"rounds": 2, "groups": 3}).groups
3
>>> AppSettings.from_run_config({"round": 2})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
hierfedlora.planner.errors.InvalidInputError: run config: round must be a known key; got 'round' (did you ...
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping

from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.rules import (
    FINITE_POSITIVE,
    NON_EMPTY_STRING,
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    Rule,
    check_fields,
)
from hierfedlora.runtime.aggregation_rules import RULE_NAMES
from hierfedlora.runtime.options import RUN_OPTION_RULES

__all__ = ["AppSettings"]

_FRACTION = Rule("a number in [0, 1)", lambda v: isinstance(v, int | float) and 0 <= v < 1, (1.0, -0.1))
_ANY_STRING = Rule("a string", lambda v: isinstance(v, str), (3,))
_BOOL = Rule("true or false", lambda v: isinstance(v, bool), (1, "yes"))

SETTING_RULES: dict[str, Rule] = {
    "rounds": POSITIVE_INT,
    "seed": NON_NEGATIVE_INT,
    "groups": POSITIVE_INT,
    "data": NON_EMPTY_STRING,
    "partition": Rule("one of 'iid', 'dirichlet', 'classes'", lambda v: v in ("iid", "dirichlet", "classes"), ("x",)),
    "alpha": FINITE_POSITIVE,
    "max_samples_per_device": NON_NEGATIVE_INT,
    "test_fraction": _FRACTION,
    "tiers": NON_EMPTY_STRING,
    "fleet_file": _ANY_STRING,
    "plan_file": _ANY_STRING,
    "cost_model_file": _ANY_STRING,
    "run_dir": NON_EMPTY_STRING,
    "model": NON_EMPTY_STRING,
    "lora_rank": POSITIVE_INT,
    "lora_alpha": FINITE_POSITIVE,
    "max_seq_len": POSITIVE_INT,
    "local_steps": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "learning_rate": FINITE_POSITIVE,
    "optimizer": Rule("'adamw' or 'sgd'", lambda v: v in ("adamw", "sgd"), ("adam",)),
    "eval_samples": POSITIVE_INT,
    "use_prefix_cache": _BOOL,
    "evaluate_groups": _BOOL,
    "replan_every": NON_NEGATIVE_INT,
    "resume": _BOOL,
    "timeout_s": FINITE_POSITIVE,
    "aggregation": Rule(
        f"one of {', '.join(RULE_NAMES)} (or empty: the plan's rule)",
        lambda v: v == "" or v in RULE_NAMES,
        ("fedprox", "FedAvg", 1),
    ),
    "hetlora_prune_gamma": RUN_OPTION_RULES["hetlora_prune_gamma"],
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AppSettings:
    """The run config of the hierfedlora Flower App (both the ServerApp and the ClientApp read it).

    Parameters
    ----------
    rounds : int
        Global rounds.
    seed : int
        Seeds the fleet (split, partition, tiers), the plan's solver, training and evaluation.
    groups : int
        Groups the planner makes.
    data, partition, alpha, max_samples_per_device, test_fraction, tiers
        How the default node data is made, exactly as ``hierfedlora fleet`` makes a fleet of
        ``num-partitions`` devices: ``data`` is ``"wordnet"`` or a CSV/JSONL path every node can read;
        ``max_samples_per_device`` 0 keeps all rows.
    fleet_file : str
        A fleet JSON (``hierfedlora fleet --out``) instead: node ``partition-id`` i holds device i's rows.
    plan_file : str
        A plan JSON to run instead of planning after discovery.
    cost_model_file : str
        A cost model JSON (``hierfedlora profile``); empty: the server measures the model at start.
    run_dir : str
        The server's run folder (checkpoints, ``reports.jsonl``, plans).
    model, lora_rank, lora_alpha, max_seq_len
        ``"default"`` (the packaged all-MiniLM-L6-v2) or a model folder every node can read; LoRA r, alpha.
    local_steps, batch_size, learning_rate, optimizer
        Planning's local steps per intra-group round and batch; the local optimizer.
    eval_samples : int
        Size of the server's seeded evaluation subset of the held-out split.
    use_prefix_cache, evaluate_groups : bool
        As :class:`~hierfedlora.runtime.options.RunOptions`.
    replan_every : int
        Re-plan from the reports every this many rounds (the closed loop); 0 never.
    resume : bool
        Continue ``run_dir``'s last committed round.
    timeout_s : float
        How long the server waits for one batch of replies.
    aggregation : str
        The aggregation rule inside and across groups (``runtime.aggregation_rules``): ``fedavg``, ``ffa``,
        ``fedex``, ``flora``, ``lora-fair`` or ``hetlora``, as ``hierfedlora run --aggregation``. Empty (the
        default): the rule the plan was priced under (``Plan.aggregation``), so ``fedavg`` when the App
        plans. The App plans under the rule (``PlanningProblem.aggregation``); a ``plan-file`` priced under
        another rule than ``fedavg`` runs only under its own.
    hetlora_prune_gamma : float
        Under ``hetlora``, a group drops its last rank component after a round when it carries under
        ``1 - gamma`` of the norm (``RunOptions.hetlora_prune_gamma``; 0 prunes one every round).
    """

    rounds: int = 3
    seed: int = 0
    groups: int = 2
    data: str = "wordnet"
    partition: str = "dirichlet"
    alpha: float = 0.5
    max_samples_per_device: int = 0
    test_fraction: float = 0.1
    tiers: str = "paper"
    fleet_file: str = ""
    plan_file: str = ""
    cost_model_file: str = ""
    run_dir: str = "runs/flower"
    model: str = "default"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    max_seq_len: int = 64
    local_steps: int = 5
    batch_size: int = 16
    learning_rate: float = 2e-3
    optimizer: str = "adamw"
    eval_samples: int = 512
    use_prefix_cache: bool = True
    evaluate_groups: bool = True
    replan_every: int = 0
    resume: bool = False
    timeout_s: float = 3600.0
    aggregation: str = ""
    hetlora_prune_gamma: float = 0.99

    def __post_init__(self) -> None:
        issues = check_fields(self, SETTING_RULES)
        if issues:
            raise InvalidInputError(issues, "run config")

    @classmethod
    def from_run_config(
        cls, run_config: Mapping[str, object], defaults: Mapping[str, object] | None = None
    ) -> AppSettings:
        """Parse Flower's run config (dashed keys); ``defaults`` fill keys the run config lacks.

        Integers given for float fields are accepted (TOML ``alpha = 1`` is an int).

        Raises
        ------
        InvalidInputError
            Unknown keys (with a suggestion) and values breaking a field's rule, all at once.
        """
        merged = {**(defaults or {}), **run_config}
        known = {field.name for field in dataclasses.fields(cls)}
        issues, values = [], {}
        for key, value in merged.items():
            name = key.replace("-", "_")
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"did you mean {close[0].replace('_', '-')!r}?" if close else ""
                issues.append(Issue(key, "a known key", key, hint))
                continue
            default = getattr(cls, name)
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            values[name] = value
        if issues:
            raise InvalidInputError(issues, "run config")
        return cls(**values)  # type: ignore[arg-type]

    @property
    def sample_cap(self) -> int | None:
        """``max_samples_per_device``, with 0 read as "no cap"."""
        return self.max_samples_per_device or None

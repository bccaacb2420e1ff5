"""What a run needs to resume: :class:`RunState` (the identity, round, clock and numpy generator of the last
committed round) and the numpy generator's state as JSON text.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(5); _ = rng.random()
>>> restore_numpy_rng(numpy_rng_state(rng)).random() == rng.random()
True
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from hierfedlora.planner import rules
from hierfedlora.planner.errors import InvalidInputError, Issue
from hierfedlora.planner.io import parse_json
from hierfedlora.planner.outcomes import RoundReport
from hierfedlora.planner.types import SCHEMA_RULE, SCHEMA_VERSION

__all__ = ["RUN_STATE_RULES", "RunState", "numpy_rng_state", "restore_numpy_rng"]

_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "Philox", "SFC64", "MT19937")


def numpy_rng_state(rng: np.random.Generator) -> str:
    """The generator's bit-generator state as JSON text (arrays as lists)."""
    return json.dumps(rng.bit_generator.state, sort_keys=True, default=lambda a: np.asarray(a).tolist())


def restore_numpy_rng(text: str) -> np.random.Generator:
    """A generator in the state :func:`numpy_rng_state` wrote."""
    state = json.loads(text)
    bit_generator = getattr(np.random, state["bit_generator"])()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _is_digest_or_empty(value: object) -> bool:
    return isinstance(value, str) and (value == "" or (len(value) == 64 and set(value) <= set("0123456789abcdef")))


def _is_rng_state(value: object) -> bool:
    try:
        state = parse_json(value) if isinstance(value, str) else None
    except InvalidInputError:
        return False
    return isinstance(state, dict) and state.get("bit_generator") in _BIT_GENERATORS and "state" in state


RUN_STATE_RULES: dict[str, rules.Rule] = {
    "plan_id": rules.NON_EMPTY_STRING,
    "fleet_sha256": rules.ANY_STRING,
    "model_sha256": rules.ANY_STRING,
    "aggregation": rules.NON_EMPTY_STRING,
    "global_round": rules.NON_NEGATIVE_INT,
    "sim_time_s": rules.FINITE_NON_NEGATIVE,
    "seed": rules.NON_NEGATIVE_INT,
    "numpy_rng_state": rules.Rule(
        f"JSON text of a numpy bit generator state (one of {', '.join(_BIT_GENERATORS)})",
        _is_rng_state,
        ("", "{}", '{"bit_generator": "Xorshift", "state": 1}', 3),
    ),
    "reports_sha256": rules.Rule(
        "a sha256 hex digest, or empty (not recorded)", _is_digest_or_empty, (7, "x", "A" * 64)
    ),
    "settings": rules.ANY_STRING,
    "schema_version": SCHEMA_RULE,
}


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RunState:
    """What a run needs to resume after ``global_round``, its last committed round (0: none yet).

    ``plan_id``, ``fleet_sha256`` and ``model_sha256`` identify the run (resume refuses others);
    ``sim_time_s`` is the simulated clock after the round; ``numpy_rng_state`` the JSON of the numpy
    generator (:func:`numpy_rng_state`); ``last_report`` the report of round ``global_round``, ``None``
    exactly at round 0, so resume can re-append it (R2); ``aggregation`` the run's aggregation rule (resume
    refuses another); ``reports_sha256`` the sha256 of the report log's lines of rounds ``1..global_round - 1``
    as they stood when the round was committed (empty where not recorded), so resume notices a changed line;
    ``settings`` the JSON text of the settings that decide the run's computation (``runtime.run_start.run_settings``:
    the run options but the round count, the model's path, the exact caches and the memory knobs, and the fault
    options), so a
    resume under other settings is refused (empty where not recorded).
    Tensors travel beside it, in safetensors.
    """

    plan_id: str
    fleet_sha256: str
    model_sha256: str
    global_round: int
    sim_time_s: float
    seed: int
    numpy_rng_state: str
    last_report: RoundReport | None = None
    aggregation: str = "fedavg"
    reports_sha256: str = ""
    settings: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        issues = rules.check_fields(self, RUN_STATE_RULES)
        if RUN_STATE_RULES["global_round"].accepts(self.global_round):
            if self.last_report is None and self.global_round > 0:
                issues.append(Issue("last_report", f"the report of round {self.global_round}", None))
            elif self.last_report is not None and not isinstance(self.last_report, RoundReport):
                issues.append(Issue("last_report", "a RoundReport or null", type(self.last_report).__name__))
            elif self.last_report is not None and self.last_report.global_round != self.global_round:
                expected = f"{self.global_round} (the checkpoint's round)" if self.global_round else "null at round 0"
                issues.append(Issue("last_report.global_round", expected, self.last_report.global_round))
        if issues:
            raise InvalidInputError(issues)

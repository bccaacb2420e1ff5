"""Print the certified gap of HierFedLoRA's plan on every fleet of the `paper` preset (README figures).

Each setting's fleet is built as `hierfedlora experiment paper` builds it (WordNet, the paper tier mix, 80
devices, the preset's seed), planned with the committed cost model and the preset's knobs, and reported with
its time to target, its bound (`planner.plan.skew_free_bound`), the gap, the skew floor, the groups' skews and
the grouping's objective against its bound.
Usage: python scripts/paper_gaps.py
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from hierfedlora.planner.fleet import make_fleet
from hierfedlora.planner.fleets.data_sources import read_data
from hierfedlora.planner.io import read_json
from hierfedlora.planner.outcomes import Grouping, SolveStatus
from hierfedlora.planner.plan import make_plan, skew_floor
from hierfedlora.planner.types import CostModel
from hierfedlora.validation.experiments import problem_for, read_preset

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    preset = read_preset(ROOT / "docs/results/paper/preset.json")
    cost = read_json(CostModel, ROOT / "docs/results/paper/cost_model.json")
    data = read_data(preset.data)
    print(
        "alpha  seed  time to target s  bound s  gap  skew floor  group skews (TV)  grouping objective / bound  CPU s"
    )
    for setting in preset.settings():
        fleet = make_fleet(
            data,
            num_devices=setting.num_devices,
            partition="iid" if setting.alpha is None else "dirichlet",
            alpha=1.0 if setting.alpha is None else setting.alpha,
            tier_mix=setting.tier_mix,
            max_samples_per_device=preset.samples_per_device,
            seed=setting.seed,
        )
        problem = problem_for(preset, fleet, cost, setting.seed)
        started = time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the flow grouping always leaves its own gap open
            plan = make_plan(problem)
        cpu_s = time.process_time() - started
        position = {d.device_id: i for i, d in enumerate(fleet.devices)}
        members = tuple(tuple(position[i] for i in g.device_ids) for g in plan.groups)
        grouping = Grouping(members=members, objective=plan.grouping_objective, bound=plan.grouping_bound,
                            status=SolveStatus.FEASIBLE, limit=plan.limit, solve_time_s=0.0, method="plan")  # fmt: skip
        skews = ", ".join(f"{g.label_skew.l1 / 2:.3f}" for g in plan.groups)
        print(
            f"{'iid' if setting.alpha is None else setting.alpha}  {setting.seed}  {plan.objective_value:.2f}  "
            f"{plan.dual_bound:.2f}  {plan.relative_gap:.2%}  {skew_floor(problem, grouping):.4f}  [{skews}]  "
            f"{plan.grouping_objective:.4f} / {plan.grouping_bound:.4f}  {cpu_s:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

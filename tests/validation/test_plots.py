"""Accuracy-against-time plots are whole PNGs written atomically, whatever the folder held before."""

from __future__ import annotations

from hierfedlora.planner.outcomes import RoundReport
from hierfedlora.validation.plots import plot_accuracy_vs_time, plot_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _reports(accuracies: list[float]) -> list[RoundReport]:
    fields = {"plan_id": "p", "wall_time_s": 0.0, "groups": (), "eval_loss": 1.0}
    return [
        RoundReport(global_round=r, sim_time_s=60.0 * r, eval_accuracy=a, **fields)
        for r, a in enumerate(accuracies, start=1)
    ]


def test_both_plots_are_whole_pngs_and_leave_no_temporary_file(tmp_path):
    """A run's plot (into a folder it makes) and a methods plot with target, budget and chance lines; a second plot
    over the first replaces it."""
    # Arrange
    runs = {"a": _reports([0.3, 0.5, 0.6]), "b": _reports([0.4, 0.45])}
    curves = {"m1": [((60.0, 120.0), (0.3, 0.5)), ((60.0, 120.0), (0.35, 0.55))], "m2": [((60.0,), (0.2,))]}
    # Act
    single = plot_accuracy_vs_time(runs, tmp_path / "new" / "acc.png", chance=0.25)
    first_bytes = single.read_bytes()
    again = plot_accuracy_vs_time({"a": runs["a"]}, single)
    methods = plot_curves(curves, tmp_path / "curves.png", title="t", target=0.5, budget_s=90.0, chance=0.25)
    # Assert
    assert single == tmp_path / "new" / "acc.png" and again == single and methods == tmp_path / "curves.png"
    assert first_bytes.startswith(PNG_MAGIC) and single.read_bytes().startswith(PNG_MAGIC)
    assert single.read_bytes() != first_bytes  # one line fewer
    assert methods.read_bytes().startswith(PNG_MAGIC) and methods.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["acc.png", "curves.png"]

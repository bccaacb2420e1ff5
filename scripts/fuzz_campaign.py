"""A fuzz campaign through the CLI's own entry point, out of CI: thousands of damaged input files.

``python scripts/fuzz_campaign.py --cases 3000 --work DIR [--seed 0]`` builds small valid inputs in
DIR (a 3-class CSV and JSONL data set, a fleet in JSON and ``.npz``, a cost model, a plan, a problem,
a convergence file, a fault file, a what-if study and a tier-mix file, and a finished one-run experiment
folder unless ``--no-experiment``), then, case after case, damages one of them and calls
``hierfedlora.cli.main`` with the command that reads it:

- JSON damage: a value replaced by a hostile one (NaN, 1e308, 10**30, null, a list, a string, nesting
  5,000 deep), a key deleted or added, a node wrapped in a list;
- byte damage: bytes flipped, the file truncated or a span cut out, a byte order mark, an empty file,
  a folder or nothing in its place; for CSV and JSONL also lines dropped, doubled or made ragged.

``run`` is called with ``--replan-every 0`` so that its readers and cross-checks run but no model loads (a
case whose inputs all pass then ends at that check, exit 2, before ``--out`` exists). What counts as a finding: an
exit code outside 0, 2, 3, 4, 5 and 74 (70 is a bug and its traceback is kept), or an exception that
escapes ``main``, or a temporary file or half-written output left behind. Each finding's input is kept
under DIR/findings. The counts go to stdout and DIR/summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import random
import shutil
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path

HOSTILE = [None, True, 0, -1, 2**63, 10**30, -(10**30), 0.0, -0.5, 1e-300, 1e308, "NaN", "Infinity", "", "x" * 300,
           [], {}, [[1]], [None], {"a": [1, {"b": None}]}, "__DEEP__", 1.5, "fast"]  # fmt: skip
GOOD_EXITS = {0, 2, 3, 4, 5, 74}


def _paths(data, prefix=()):
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(data, list):
        for idx, value in enumerate(data[:6]):
            found += _paths(value, (*prefix, idx))
    return found


def _parent(data, path):
    for key in path[:-1]:
        data = data[key]
    return data


def mutate_json(text: str, rng: random.Random) -> str:
    """One hostile change to JSON text (or a byte-level one)."""
    if rng.random() < 0.25:
        return mutate_bytes(text.encode(), rng).decode("utf-8", "replace")
    data = json.loads(text)
    for _ in range(rng.choice((1, 1, 2, 3))):
        path = rng.choice(_paths(data))
        kind = rng.choice(("replace", "replace", "replace", "delete", "add", "wrap", "swap"))
        if not path:
            data = rng.choice(HOSTILE) if kind == "replace" else data
            continue
        parent = _parent(data, path)
        if kind == "replace":
            parent[path[-1]] = copy.deepcopy(rng.choice(HOSTILE))
        elif kind == "delete":
            del parent[path[-1]]
        elif kind == "add" and isinstance(parent, dict):
            parent[rng.choice(("extra", "memory", "devices", ""))] = copy.deepcopy(rng.choice(HOSTILE))
        elif kind == "add":
            parent.append(copy.deepcopy(rng.choice(HOSTILE)))
        elif kind == "wrap":
            parent[path[-1]] = [parent[path[-1]]]
        else:  # type swap: a number as a string, a string as a number
            value = parent[path[-1]]
            parent[path[-1]] = str(value) if isinstance(value, int | float) else 7 if isinstance(value, str) else value
    out = json.dumps(data).replace('"NaN"', "NaN", 1 if rng.random() < 0.3 else 0)
    out = out.replace('"Infinity"', "Infinity", 1 if rng.random() < 0.3 else 0)
    return out.replace('"__DEEP__"', "[" * 5000 + "]" * 5000)


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(("flip", "flip", "truncate", "cut", "bom", "empty", "append"))
    if not data or kind == "empty":
        return b""
    at = rng.randrange(len(data))
    if kind == "flip":
        out = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            out[rng.randrange(len(out))] ^= rng.randint(1, 255)
        return bytes(out)
    if kind == "truncate":
        return data[:at]
    if kind == "cut":
        return data[:at] + data[at + rng.randint(1, 80) :]
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))


def mutate_lines(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    at = rng.randrange(len(lines))
    kind = rng.choice(("drop", "double", "ragged", "header", "garbage", "bytes"))
    if kind == "bytes":
        return mutate_bytes(text.encode(), rng).decode("utf-8", "replace")
    if kind == "drop":
        del lines[at]
    elif kind == "double":
        lines.insert(at, lines[at])
    elif kind == "ragged":
        lines[at] = lines[at] + rng.choice((",x", ",", "", '"', ",,"))
    elif kind == "header":
        lines.insert(at, lines[0])
    else:
        lines[at] = "".join(rng.choice(',"\n\r ab{}[]:\x00') for _ in range(rng.randint(0, 12)))
    return "\n".join(lines) + rng.choice(("\n", "", "\r\n"))


def build_inputs(work: Path, with_experiment: bool) -> dict[str, Path]:
    """Small valid inputs, each made by the package itself."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hierfedlora.planner.fleet import make_fleet, save_fleet
    from hierfedlora.planner.fleets.datasets import read_csv
    from hierfedlora.planner.io import sha256_of, write_json
    from hierfedlora.planner.types import ConvergenceParams
    from hierfedlora.runtime.faults import FaultOptions
    from tests.factories import make_cost_model, make_two_group_plan

    base = work / "base"
    base.mkdir(parents=True, exist_ok=True)
    rows = ["text,label"] + [f"sample {i} of class {i % 3},c{i % 3}" for i in range(48)]
    (base / "data.csv").write_text("\n".join(rows) + "\n")
    (base / "data.jsonl").write_text(
        "".join(json.dumps({"text": f"sample {i}", "label": f"c{i % 3}"}) + "\n" for i in range(48))
    )
    fleet = make_fleet(read_csv(base / "data.csv"), num_devices=4, partition="iid", seed=0)
    save_fleet(base / "fleet.json", fleet)
    save_fleet(base / "fleet.npz", fleet)
    cost = make_cost_model(2)
    write_json(base / "cost.json", cost)
    plan = make_two_group_plan(fleet)
    import dataclasses

    plan = dataclasses.replace(plan, fleet_sha256=sha256_of(fleet.devices), cost_model_sha256=sha256_of(cost))
    write_json(base / "plan.json", plan)
    (base / "problem.json").write_text(json.dumps({"num_groups": 2, "local_steps": 2, "solver": {"seed": 1}}))
    write_json(base / "convergence.json", ConvergenceParams())
    write_json(base / "faults.json", FaultOptions(dropout=0.2, straggler_frac=0.1, poison_frac=0.1))
    (base / "mix.json").write_text(json.dumps({"laptop": 1, "phone-flagship": 2}))
    (base / "study.json").write_text(
        json.dumps(
            {
                "fleet_sizes": [6],
                "tier_mixes": ["paper"],
                "num_classes": 3,
                "samples_per_device": 8,
                "problem": {"num_groups": 2, "solver": {"grouping_method": "flow"}},
            }
        )
    )
    inputs = {name: base / name for name in ("data.csv", "data.jsonl", "fleet.json", "fleet.npz", "cost.json",
              "plan.json", "problem.json", "convergence.json", "faults.json", "mix.json", "study.json")}  # fmt: skip
    if with_experiment:
        from hierfedlora import cli
        from hierfedlora.validation.experiments import PRESETS

        preset = dataclasses.replace(
            PRESETS["quick"], name="fuzz", fleet_sizes=(4,), num_groups=2, methods=("fedlora",), max_rounds=1,
            eval_samples=8, max_seq_len=8, batch_size=4, samples_per_device=8, alphas=(1.0,), seeds=(0,),
            data=str(base / "data.csv"),
        )  # fmt: skip
        write_json(base / "preset.json", preset)
        write_json(base / "cost6.json", dataclasses.replace(make_cost_model(6), batch_size=4, seq_len=8))
        code = cli.main(["experiment", "--preset-file", str(base / "preset.json"), "--cost-model",
                         str(base / "cost6.json"), "--out", str(base / "experiment")])  # fmt: skip
        if code != 0:
            raise SystemExit(f"the experiment for the calibrate cases failed ({code})")
        inputs["experiment"] = base / "experiment"
    return inputs


def commands(inputs: dict[str, Path], damaged: dict[str, Path], out: Path) -> list[list[str]]:
    """The CLI calls that read the damaged file(s) (``damaged`` maps an input name to its damaged copy)."""
    f = {**inputs, **damaged}
    s = {k: str(v) for k, v in f.items()}
    o = str(out)
    run = ["run", s["plan.json"], "--fleet", s["fleet.json"], "--cost-model", s["cost.json"], "--rounds", "1"]
    run += ["--out", o + "/run", "--faults", s["faults.json"], "--allow-cost-mismatch", "--replan-every", "0"]

    def plan(fleet: str, *extra: str) -> list[str]:
        return ["plan", fleet, "--cost-model", s["cost.json"], *extra, "--out", o + "/p.json"]

    whatif_mix = ["whatif", "--devices", "6", "--classes", "3", "--samples-per-device", "8", "--tiers", s["mix.json"]]
    calls = {
        "fleet.json": [plan(s["fleet.json"], "--groups", "2"), run],
        "fleet.npz": [plan(s["fleet.npz"], "--groups", "2")],
        "cost.json": [plan(s["fleet.json"], "--groups", "2"), run],
        "problem.json": [plan(s["fleet.json"], "--problem", s["problem.json"])],
        "convergence.json": [plan(s["fleet.json"], "--groups", "2", "--convergence", s["convergence.json"])],
        "plan.json": [run],
        "faults.json": [run],
        "data.csv": [["fleet", "--data", s["data.csv"], "--devices", "3", "--out", o + "/f.json"]],
        "data.jsonl": [["fleet", "--data", s["data.jsonl"], "--devices", "3", "--out", o + "/f.json"]],
        "mix.json": [[*whatif_mix, "--out", o + "/w"]],
        "study.json": [["whatif", "--study", s["study.json"], "--out", o + "/w"]],
    }
    if "experiment" in f:
        calls["experiment"] = [["calibrate", s["experiment"], "--out", o + "/cal.json"]]
    return calls


def _damage(name: str, source: Path, target: Path, rng: random.Random) -> str:
    """Write a damaged copy of ``source`` to ``target``; return what was done."""
    roll = rng.random()
    if roll < 0.03:
        target.mkdir()
        return "folder"
    if roll < 0.05:
        return "missing"
    if name.endswith(".npz"):
        target.write_bytes(mutate_bytes(source.read_bytes(), rng))
        return "bytes"
    text = source.read_text()
    if name.endswith((".csv", ".jsonl")):
        target.write_text(mutate_lines(text, rng), errors="surrogatepass")
        return "lines"
    target.write_text(mutate_json(text, rng), errors="surrogatepass")
    return "json"


def _damage_experiment(source: Path, target: Path, rng: random.Random) -> str:
    shutil.copytree(source, target)
    files = [p for p in target.rglob("*") if p.is_file() and p.suffix in (".json", ".jsonl") and p.name != ".lock"]
    victim = rng.choice(files)
    if rng.random() < 0.1:
        victim.unlink()
        return f"deleted {victim.relative_to(target)}"
    text = victim.read_text()
    if victim.suffix == ".jsonl":
        victim.write_text(mutate_lines(text, rng), errors="surrogatepass")
    else:
        victim.write_text(mutate_json(text, rng), errors="surrogatepass")
    return f"damaged {victim.relative_to(target)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-experiment", action="store_true", help="skip the calibrate cases (no training)")
    args = parser.parse_args()
    import logging

    from hierfedlora import cli

    inputs = build_inputs(args.work, not args.no_experiment)
    logging.disable(logging.CRITICAL)
    rng = random.Random(args.seed)
    counts: Counter[str] = Counter()
    exits: Counter[str] = Counter()
    findings = []
    solver_failures: list[dict] = []
    names = sorted(inputs)
    for case in range(args.cases):
        name = names[case % len(names)]
        folder = Path(tempfile.mkdtemp(prefix=f"case{case}-", dir=args.work))
        damaged = folder / ("damaged-" + name)
        how = (
            _damage_experiment(inputs[name], damaged, rng)
            if name == "experiment"
            else _damage(name, inputs[name], damaged, rng)
        )
        for argv in commands(inputs, {name: damaged}, folder / "out")[name]:
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    code = cli.main(argv)
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 2
            except BaseException:  # the finding itself
                code = "escaped"
                err.write(traceback.format_exc())
            counts[argv[0]] += 1
            exits[f"{argv[0]} {code}"] += 1
            leftovers = [str(p) for p in folder.rglob("*.tmp")]
            bad = code not in GOOD_EXITS or leftovers or "Traceback" in err.getvalue()
            if code == 4:  # a solver failure from damaged input is legal but worth a look: its message is kept
                solver_failures.append({"case": case, "input": name, "damage": how, "stderr": err.getvalue()[-400:]})
            if bad:
                keep = args.work / "findings" / f"case{case}"
                shutil.copytree(folder, keep, dirs_exist_ok=True)
                (keep / "argv.json").write_text(json.dumps(argv))
                (keep / "stderr.txt").write_text(err.getvalue())
                findings.append({"case": case, "input": name, "damage": how, "exit": code, "argv": argv,
                                 "leftovers": leftovers, "stderr": err.getvalue()[-400:]})  # fmt: skip
                print(f"FINDING case {case}: {name} ({how}) -> {code}: {err.getvalue().strip()[-300:]}", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        if (case + 1) % 100 == 0:
            print(f"{case + 1} cases, {len(findings)} findings", flush=True)
    summary = {
        "cases": args.cases,
        "calls": dict(counts),
        "exits": dict(sorted(exits.items())),
        "findings": findings,
        "solver_failures": solver_failures,
    }
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("findings", "solver_failures")}, indent=1))
    print(f"{len(findings)} findings")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

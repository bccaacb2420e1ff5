"""Aggregation rules: exactness of FFA-LoRA, FedEx-LoRA and FLoRA (float64), LoRA-FAIR's correction, properties."""

from __future__ import annotations

import doctest

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hierfedlora.models.adapters import truncate_rank
from hierfedlora.planner.errors import InvalidInputError
from hierfedlora.runtime import aggregation_rules
from hierfedlora.runtime.aggregation_rules import RULE_NAMES, effective_products, get_rule, hetlora_prune_rank

LAYERS, MODULES, RANK, IN, OUT = 3, ("q", "v"), 3, 4, 5
EXACT = ("ffa", "fedex", "flora")


def _keys(depth: int) -> list[str]:
    return [
        f"layers.{layer}.{m}.lora_{f}" for layer in range(LAYERS - depth, LAYERS) for m in MODULES for f in ("A", "B")
    ] + ["head.bias"]


def _shape(key: str) -> tuple[int, ...]:
    if key.endswith("lora_A"):
        return (RANK, IN)
    return (OUT, RANK) if key.endswith("lora_B") else (2,)


def _global(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(_shape(k), generator=gen, dtype=torch.float64) for k in _keys(LAYERS)}


def _client(global_state, depth: int, seed: int, *, frozen_a: bool, rank: int | None = None):
    gen = torch.Generator().manual_seed(1000 + seed)
    state = {}
    for key in _keys(depth):
        if key.endswith("lora_A") and frozen_a:
            state[key] = global_state[key].clone()
        else:
            state[key] = global_state[key] + torch.randn(_shape(key), generator=gen, dtype=torch.float64)
    return truncate_rank(state, rank) if rank is not None else state


def _clients(rule: str, depths, ranks=None):
    g = _global()
    ranks = ranks or [None] * len(depths)
    states = [
        _client(g, d, i, frozen_a=rule == "ffa", rank=r) for i, (d, r) in enumerate(zip(depths, ranks, strict=True))
    ]
    return g, states


def _expected(global_state, states, weights, deltas=None):
    """Per module: sum_k w_k (B_k A_k + D_k) over the holders, w renormalised over them."""
    deltas = deltas or [{} for _ in states]
    products = [effective_products(s, d) for s, d in zip(states, deltas, strict=True)]
    out = {}
    for module in effective_products(global_state):
        holders = [k for k, p in enumerate(products) if module in p]
        if holders:
            total = sum(weights[k] for k in holders)
            out[module] = sum(weights[k] / total * products[k][module] for k in holders)
    return out


@pytest.mark.parametrize("rule", EXACT)
@pytest.mark.parametrize(
    ("depths", "ranks"),
    [([3, 3, 3], None), ([1, 3, 2], None), ([3, 2, 3], [1, 3, 2])],
    ids=["equal-depths", "mixed-depths", "mixed-ranks"],
)
def test_exact_rules_average_effective_weights(rule, depths, ranks):
    g, states = _clients(rule, depths, ranks)
    weights = [1.0, 3.0, 2.0]
    out = get_rule(rule).aggregate(g, states, weights)
    got = effective_products(out.state, out.base_delta)
    want = _expected(g, states, weights)
    assert set(want) == set(got)
    for module, value in want.items():
        assert torch.allclose(got[module], value, atol=1e-5, rtol=0), (rule, module)
    # fedavg is not exact on the same inputs (the check can fail)
    if rule != "ffa":
        plain = get_rule("fedavg").aggregate(g, states, weights)
        plain_p = effective_products(plain.state)
        assert any(not torch.allclose(plain_p[m], v, atol=1e-5) for m, v in want.items())


@pytest.mark.parametrize("rule", EXACT)
def test_two_levels_compose_to_the_device_average(rule):
    """Devices into groups, groups (of different depths) into the global model: exact end to end."""
    g = _global()
    groups = [
        [_client(g, 3, i, frozen_a=rule == "ffa") for i in range(2)],
        [_client(g, 1, 5 + i, frozen_a=rule == "ffa") for i in range(3)],
    ]
    samples = [[1.0, 2.0], [3.0, 1.0, 1.0]]
    r = get_rule(rule)
    group_out = []
    for states, w in zip(groups, samples, strict=True):
        start = {k: g[k] for k in states[0]}
        group_out.append(r.aggregate(start, states, w))
    out = r.aggregate(g, [o.state for o in group_out], [sum(w) for w in samples], [o.base_delta for o in group_out])
    devices = [s for states in groups for s in states]
    want = _expected(g, devices, [w for ws in samples for w in ws])
    got = effective_products(out.state, out.base_delta)
    for module, value in want.items():
        assert torch.allclose(got[module], value, atol=1e-5, rtol=0), module


def test_modules_no_input_trained_keep_their_values_and_get_no_delta():
    g, states = _clients("fedex", [1, 1])
    out = get_rule("fedex").aggregate(g, states, [1, 1])
    for key in _keys(LAYERS):
        if key.startswith("layers.0.") or key.startswith("layers.1."):
            assert torch.equal(out.state[key], g[key])
    assert set(out.base_delta) == {"layers.2.q", "layers.2.v"}


def test_ffa_refuses_a_trained_lora_a():
    g, states = _clients("fedex", [3, 3])
    with pytest.raises(InvalidInputError, match="frozen global lora_A"):
        get_rule("ffa").aggregate(g, states, [1, 1])


def test_lora_fair_correction_lowers_the_product_error_against_fedavg():
    g, states = _clients("lora-fair", [3, 2, 3])
    weights = [2.0, 1.0, 1.0]
    want = _expected(g, states, weights)
    fair = effective_products(get_rule("lora-fair").aggregate(g, states, weights).state)
    plain = effective_products(get_rule("fedavg").aggregate(g, states, weights).state)
    for module, target in want.items():
        fair_err = torch.linalg.matrix_norm(fair[module] - target)
        plain_err = torch.linalg.matrix_norm(plain[module] - target)
        assert fair_err < plain_err, module


def test_hetlora_weights_modules_by_the_norm_of_their_update():
    g = {k: torch.zeros(_shape(k), dtype=torch.float64) for k in _keys(1)}
    big, small = dict(g), dict(g)
    big["layers.2.q.lora_A"] = torch.ones(RANK, IN, dtype=torch.float64)
    big["layers.2.q.lora_B"] = torch.full((OUT, RANK), 3.0, dtype=torch.float64)
    small["layers.2.q.lora_A"] = torch.ones(RANK, IN, dtype=torch.float64)
    small["layers.2.q.lora_B"] = torch.full((OUT, RANK), 1.0, dtype=torch.float64)
    out = get_rule("hetlora").aggregate(g, [big, small], [1, 1])
    # norms 3:1 -> weights 0.75, 0.25 -> B = 2.5 (sample weights would give 2.0)
    assert torch.allclose(out.state["layers.2.q.lora_B"], torch.full((OUT, RANK), 2.5, dtype=torch.float64))


def test_hetlora_prune_rank_drops_a_negligible_tail_only():
    state = {"layers.0.q.lora_A": torch.ones(3, 4), "layers.0.q.lora_B": torch.tensor([[1.0, 1.0, 1e-6]])}
    assert hetlora_prune_rank(state, 3) == 2
    assert hetlora_prune_rank(state, 2) == 2
    assert hetlora_prune_rank(state, 1) == 1


def test_unknown_rule_is_named():
    with pytest.raises(InvalidInputError, match="aggregation must be one of fedavg, ffa, fedex, flora"):
        get_rule("fedprox")


# --- properties --------------------------------------------------------------------------------------

_weights = st.lists(st.floats(0.1, 100.0), min_size=1, max_size=4)


@settings(max_examples=15, deadline=None)
@given(rule=st.sampled_from(RULE_NAMES), weights=_weights, seed=st.integers(0, 10_000))
def test_weights_sum_to_one_via_identical_inputs(rule, weights, seed):
    """Identical inputs aggregate to themselves for any weights: the effective weights sum to one."""
    g = _global(seed)
    client = _client(g, 2, seed, frozen_a=rule == "ffa")
    out = get_rule(rule).aggregate(g, [client] * len(weights), weights)
    got, want = effective_products(out.state, out.base_delta), effective_products(client)
    for module, value in want.items():
        assert torch.allclose(got[module], value, atol=1e-9), module
    assert torch.allclose(out.state["head.bias"], client["head.bias"], atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(rule=st.sampled_from(RULE_NAMES), weight=st.floats(0.1, 100.0), seed=st.integers(0, 10_000))
def test_a_single_client_returns_itself(rule, weight, seed):
    g = _global(seed)
    client = _client(g, 2, seed, frozen_a=rule == "ffa")
    out = get_rule(rule).aggregate(g, [client], [weight])
    if rule == "flora":  # merged into the base, fresh B: the same effective weights
        for module, value in effective_products(client).items():
            assert torch.allclose(effective_products(out.state, out.base_delta)[module], value, atol=1e-12)
    else:
        for key, value in client.items():
            assert torch.allclose(out.state[key], value, atol=1e-12), key
        assert all(float(d.abs().max()) < 1e-12 for d in out.base_delta.values())


@settings(max_examples=15, deadline=None)
@given(
    rule=st.sampled_from(RULE_NAMES),
    perm=st.permutations([0, 1, 2]),
    depths=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    seed=st.integers(0, 10_000),
)
def test_permutation_invariance(rule, perm, depths, seed):
    g = _global(seed)
    states = [_client(g, d, seed + i, frozen_a=rule == "ffa") for i, d in enumerate(depths)]
    weights = [1.0, 2.0, 5.0]
    r = get_rule(rule)
    a = r.aggregate(g, states, weights)
    b = r.aggregate(g, [states[i] for i in perm], [weights[i] for i in perm])
    for key in g:
        assert torch.allclose(a.state[key], b.state[key], atol=1e-9), key
    assert a.base_delta.keys() == b.base_delta.keys()
    for module in a.base_delta:
        assert torch.allclose(a.base_delta[module], b.base_delta[module], atol=1e-9)


def test_doctests():
    assert doctest.testmod(aggregation_rules).failed == 0


def test_the_fedavg_rule_is_the_runtime_fedavg_bit_for_bit():
    """float32 states: the rule equals (A1) inside a group and (A2) across groups of mixed depths, exactly."""
    from hierfedlora.runtime.aggregation import fedavg, merge_across_groups

    g = {k: v.float() for k, v in _global(7).items()}
    states = [{k: v.float() for k, v in _client(g, d, i, frozen_a=False).items()} for i, d in enumerate([3, 1, 2])]
    weights = [3.0, 7.0, 5.0]
    out = get_rule("fedavg").aggregate(g, states, weights)
    want = merge_across_groups(g, states, weights)
    assert all(torch.equal(out.state[k], want[k]) for k in g) and out.base_delta == {}
    same = [{k: s[k] for k in states[0]} for s in (states[0], g, states[0])]
    start = {k: g[k] for k in states[0]}
    intra = get_rule("fedavg").aggregate(start, same, weights).state
    assert all(torch.equal(intra[k], v) for k, v in fedavg(same, weights).items())

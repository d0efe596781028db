"""CPU states: how a fleet of CPU devices is declared, and the build's side-by-side timing in each."""

from __future__ import annotations

import os

import pytest

from hdap.latency.cpu_states import CpuState, cpu_states_problem, metric_key, parse_cpu_states


def test_the_default_states_are_one_thread_every_core_and_every_core_beside_a_busy_process_in_equal_shares() -> None:
    states = parse_cpu_states("1,all,all+load")
    assert [(s.threads, s.background_processes) for s in states] == [(1, 0), (0, 0), (0, 1)]
    assert [s.share for s in states] == pytest.approx([1 / 3] * 3)
    assert states[2].thread_count() == len(os.sched_getaffinity(0))
    assert states[2].describe() == "every core beside 1 busy process" and metric_key(states[2].name) == "all_load"


def test_given_shares_are_normalised_and_loads_counted() -> None:
    states = parse_cpu_states("1@2, 2+load3@1, 4@1")
    assert [s.share for s in states] == pytest.approx([0.5, 0.25, 0.25])
    assert states[1] == CpuState("2+load3", 2, 3, 0.25) and states[1].describe() == "2 threads beside 3 busy processes"


def test_a_state_pinned_to_cores_runs_there_and_counts_them_as_every_core() -> None:
    from hdap.errors import HdapError
    from hdap.latency.cpu_states import pinned

    state, = parse_cpu_states("all/0+load")
    assert state.cores == (0,) and state.thread_count() == 1 and state.describe() == "every core on core 0 beside 1 busy process"
    allowed = os.sched_getaffinity(0)
    with pinned(state):
        assert os.sched_getaffinity(0) == {0}
    assert os.sched_getaffinity(0) == allowed
    absent = max(allowed) + 1
    with pytest.raises(HdapError, match=f"pinned to core {absent}, but this process may use only cores"), \
            pinned(parse_cpu_states(f"1/{absent}")[0]):
        pass
    assert os.sched_getaffinity(0) == allowed


@pytest.mark.parametrize("text, says", [("", "lists no CPU state"), ("1/3-1", "cores run backwards"), ("1/a", "not a state"), ("0", "'0', which is not a state"),
                                        ("two", "'two', which is not a state"), ("1@0.5,2", "some states but not all"),
                                        ("1,1", "twice"), ("1@0", "sum to 0")])
def test_a_malformed_state_list_gets_one_sentence(text: str, says: str) -> None:
    assert says in cpu_states_problem(text)


def test_the_build_times_both_models_in_every_state_and_weighs_them_by_share() -> None:
    """Real ONNX Runtime sessions: a model with half the channels against the whole one, in two states."""
    from hdap.deploy.onnxruntime_build import compare_latency
    from hdap.latency.layers import LayerConfig
    from hdap.latency.onnx_graphs import layers_graph

    def graph(width: int):
        return layers_graph([LayerConfig("conv", 16, width, 3, 1, 32, 32, "fp32"),
                             LayerConfig("conv", width, width, 3, 1, 32, 32, "fp32")], classes=10)

    affinity = os.sched_getaffinity(0)
    timing = compare_latency(graph(8), graph(64), (16, 32, 32), parse_cpu_states("1@3,all+load@1"), rounds=3, repeats=5, warmup=2)
    assert [s.state for s in timing.states] == ["1", "all+load"] and timing.rounds == 3
    assert [s.share for s in timing.states] == [0.75, 0.25] and timing.states[1].threads == len(affinity)
    assert os.sched_getaffinity(0) == affinity  # the load's processes are gone and this one runs where it did
    assert timing.latency_ms == pytest.approx(0.75 * timing.states[0].latency_ms + 0.25 * timing.states[1].latency_ms, abs=1e-4)

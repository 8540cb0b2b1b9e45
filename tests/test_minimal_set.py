"""The minimal set of directly-required packages, on small cases and every real fixture graph."""
import pytest

import channels
import pm

PROBE = pm.load_probe()


def graph_of(records):
    return PROBE.dependency_graph(records)


def rec(name, *depends):
    return {"name": name, "version": "1", "depends": list(depends)}


def reaches(graph, start):
    return PROBE.closure(graph, graph[start])


def assert_minimal(graph, minimal):
    assert PROBE.closure(graph, minimal) == set(graph), "closure of the minimal set is not the environment"
    for member in minimal:
        others = set(minimal) - {member}
        assert not (reaches(graph, member) & others), "%s reaches another member" % member


def test_packages_nothing_depends_on_are_kept():
    graph = graph_of([rec("app", "lib >=1"), rec("lib", "__glibc >=2.17"), rec("tool")])
    assert PROBE.minimal_set(graph) == ["app", "tool"]


def test_a_root_cycle_keeps_one_member_and_covers_both():
    graph = graph_of([rec("python", "pip", "libz"), rec("pip", "python >=3"), rec("libz")])
    minimal = PROBE.minimal_set(graph)
    assert minimal == ["python"]
    assert_minimal(graph, minimal)


def test_a_requested_member_stands_for_its_cycle():
    graph = graph_of([rec("python", "pip"), rec("pip", "python")])
    assert PROBE.minimal_set(graph, {"pip": "pip"}) == ["pip"]


def test_a_cycle_below_a_root_adds_nothing():
    graph = graph_of([rec("app", "python"), rec("python", "pip"), rec("pip", "python")])
    assert PROBE.minimal_set(graph) == ["app"]


def test_spec_names_accept_channels_operators_and_brackets():
    for spec, name in [("numpy >=1.2", "numpy"), ("conda-forge::numpy=1.2", "numpy"), ("libblas=*=*openblas", "libblas"),
                       ("python_abi 3.12.* *_cp312", "python_abi"), ("pkg[version='>=2']", "pkg"), ("x~=5.0", "x")]:
        assert PROBE.spec_name(spec) == name


def test_a_long_chain_does_not_hit_the_recursion_limit():
    records = [rec("p%d" % i, "p%d" % (i + 1)) for i in range(5000)] + [rec("p5000")]
    assert PROBE.minimal_set(graph_of(records)) == ["p0"]


@pytest.mark.parametrize("env_name", channels.real_env_names())
def test_minimal_set_property_holds_on_real_environments(env_name):
    graph = graph_of(channels.load_graph(env_name))
    requested = dict((PROBE.spec_name(s), s) for s in channels.env_yml_specs(env_name))
    minimal = PROBE.minimal_set(graph, requested)
    assert_minimal(graph, minimal)
    assert 0 < len(minimal) < len(graph)
    if env_name != "Cantera__cantera-papers":  # its lock also holds a second, development env file
        assert set(minimal) <= set(requested), "direct requirements should be among environment.yml's entries"

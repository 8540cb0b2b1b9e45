"""How the direct requirements of each real fixture environment resolve with apt and pip here.

For every environment in tests/fixtures/real-envs, the direct requirements are computed as the
probe computes them (linux-64 graph, environment.yml's specs as the requested ones), then pm's
resolver searches them with the built-in apt section (apt-cache, this machine's lists) and pip
section (pip index versions; PyPI or whatever PIP_INDEX_URL points at). Each requirement is counted
by how its best candidate matched: exact name, relaxed search (naming pattern or name inside), the
mapping table, or unresolved.
"""
import collections
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
import channels  # noqa: E402
import pm  # noqa: E402


def classify(candidate):
    if candidate is None:
        return "unresolved"
    if candidate.why.startswith("mapping"):
        return "mapping"
    if candidate.why == "exact name":
        return "exact"
    return "relaxed"


def main():
    probe = pm.load_probe()
    managers = pm.load_managers(pm.Store.default())
    for env_name in channels.real_env_names():
        records = channels.load_graph(env_name)
        graph = probe.dependency_graph(records)
        requested = dict((probe.spec_name(s), s) for s in channels.env_yml_specs(env_name))
        minimal = probe.minimal_set(graph, requested)
        by_name = dict((r["name"], r) for r in records)
        reqs = pm.requirements_of([{"name": n, "version": by_name[n]["version"], "build_string": by_name[n]["build"]}
                                   for n in minimal], pm.EnvFile())
        print("\n%s: %d direct requirements" % (env_name, len(reqs)))
        for key in ("apt", "pip"):
            counts, unresolved, detail = collections.Counter(), [], []
            for req in reqs:
                found = pm.find_candidates(req, [managers[key]])
                kind = classify(found[0] if found else None)
                counts[kind] += 1
                if kind == "unresolved":
                    unresolved.append(req.name)
                elif kind != "exact":
                    detail.append("%s->%s" % (req.name, found[0].package))
            print("  %-4s exact %2d  relaxed %2d  mapping %2d  unresolved %2d" % (
                key, counts["exact"], counts["relaxed"], counts["mapping"], counts["unresolved"]))
            print("       unresolved: %s" % (", ".join(unresolved) or "-"))
            print("       relaxed/mapped: %s" % (", ".join(detail) or "-"))
            sys.stdout.flush()


if __name__ == "__main__":
    main()

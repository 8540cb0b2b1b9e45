"""Built-in searches of managers that cannot run here, parsed from their output formats.

dnf, yum's repoquery, zypper, pacman, brew, spack and aptitude do not exist on this Debian machine,
so a stand-in executable of the manager's name prints a sample and the built-in search command runs
unchanged (its awk/grep/tr pipeline included). The samples were not captured on real machines in
this session: they are written in each tool's documented output format (the man pages of dnf
repoquery --qf, zypper search -s, pacman -Ss, brew search, spack list, aptitude search -F) with
real package names and versions of the named distributions.
"""
import os

import pytest

import pm

SAMPLES = {
    # Fedora 40: dnf repoquery -q --qf '%{name} %{version}\n' '*zlib*'
    "dnf": ("zlib-ng-compat 2.1.6\nzlib-ng-compat-devel 2.1.6\nzlib-ng-compat-static 2.1.6\n",
            [("zlib-ng-compat", "2.1.6"), ("zlib-ng-compat-devel", "2.1.6"), ("zlib-ng-compat-static", "2.1.6")]),
    # CentOS 7: repoquery -q --qf '%{name} %{version}' '*zlib*'
    "repoquery": ("zlib 1.2.7\nzlib-devel 1.2.7\nzlib-static 1.2.7\n",
                  [("zlib", "1.2.7"), ("zlib-devel", "1.2.7"), ("zlib-static", "1.2.7")]),
    # openSUSE Leap 15.5: zypper --quiet search -s zlib
    "zypper": ("S  | Name          | Type       | Version        | Arch   | Repository\n"
               "---+---------------+------------+----------------+--------+-----------\n"
               "i+ | zlib-devel    | package    | 1.2.13-150500.4.3.1 | x86_64 | Update\n"
               "   | zlib-devel    | srcpackage | 1.2.13-150500.4.3.1 | noarch | Update\n"
               "i  | libz1         | package    | 1.2.13-150500.4.3.1 | x86_64 | Update\n",
               [("zlib-devel", "1.2.13-150500.4.3.1"), ("libz1", "1.2.13-150500.4.3.1")]),
    # Arch Linux: pacman -Ss -- zlib
    "pacman": ("core/zlib 1:1.3.1-2 [installed]\n    Compression library implementing the deflate compression method\n"
               "extra/zlib-ng 2.2.2-1\n    zlib replacement with optimizations for next generation systems\n",
               [("zlib", "1:1.3.1-2"), ("zlib-ng", "2.2.2-1")]),
    # macOS, Homebrew 4: brew search -- zlib
    "brew": ("==> Formulae\nzlib                     zlib-ng                  zlib-ng-compat\n\n==> Casks\n",
             [("zlib", None), ("zlib-ng", None), ("zlib-ng-compat", None)]),
    # Spack 0.22: spack list zlib (piped: one name per line; on a TTY: columns)
    "spack": ("zlib  zlib-api  zlib-ng\n", [("zlib", None), ("zlib-api", None), ("zlib-ng", None)]),
    # Debian 12: aptitude search --disable-columns -F '%p %V' -- zlib
    "aptitude": ("zlib1g 1:1.2.13.dfsg-1\nzlib1g-dev 1:1.2.13.dfsg-1\n",
                 [("zlib1g", "1:1.2.13.dfsg-1"), ("zlib1g-dev", "1:1.2.13.dfsg-1")]),
}
MANAGER_OF = {"dnf": "dnf", "repoquery": "yum", "zypper": "zypper", "pacman": "pacman", "brew": "brew",
              "spack": "spack", "aptitude": "aptitude"}


@pytest.fixture
def stand_in_path(tmp_path, monkeypatch):
    for exe, (sample, _) in SAMPLES.items():
        (tmp_path / ("%s.txt" % exe)).write_text(sample)
        script = tmp_path / exe
        script.write_text('#!/bin/sh\ncat "%s"\n' % (tmp_path / ("%s.txt" % exe)))
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])


@pytest.mark.parametrize("exe", sorted(SAMPLES))
def test_builtin_search_reads_recorded_output(exe, stand_in_path):
    manager = pm.load_managers(pm.Store.default())[MANAGER_OF[exe]]
    assert manager.search("zlib") == SAMPLES[exe][1]


def test_mapping_and_ranking_pick_the_development_package_on_rpm_systems(stand_in_path):
    manager = pm.load_managers(pm.Store.default())["yum"]
    best = pm.find_candidates(pm.Requirement("zlib", "1.2.13"), [manager])
    assert [c.package for c in best][:2] == ["zlib-devel", "zlib"]
    assert best[0].why.startswith("mapping table") and best[1].why == "exact name"

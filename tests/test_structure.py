"""pm.py's shape, as a maintainer relies on it: sections in the order the data flows (none uses a later
one, but for the original tool's appendix and the command line), and no function too tangled to read
(radon's complexity C or better; the probe's command line is exempt)."""
import ast
import re

from radon.complexity import cc_rank, cc_visit

import pm
from conftest import ROOT

BANNER = re.compile(r"^# == (.+?) =+\s*$")
LATE_ALLOWED = ("platform-migrator 1.1.0 compatibility", "Command line")  # an appendix and the entry: called from above
PROBE_COMMAND_LINE = ("pack", "resolve_answers")  # the probe's command line: one flat list of its options


def pm_source():
    with open(ROOT + "/pm.py") as handle:
        return handle.read()


def sections_of(source):
    """[(first line, banner name)] of pm.py's '# ==' sections, the probe's own banners (in its string) left out."""
    lines = source.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("PROBE_SOURCE = "))
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("'''"))
    return [(i + 1, BANNER.match(line).group(1)) for i, line in enumerate(lines)
            if BANNER.match(line) and not start < i < end]


def later_uses(source):
    """{(section, later section): {'user->used'}}: a top-level function or class of one section naming a
    top-level definition of a section below it."""
    sections = sections_of(source)

    def section_at(line):
        return [name for first, name in sections if first <= line][-1] if line >= sections[0][0] else "(head)"

    tree = ast.parse(source)
    defined = {}
    for node in tree.body:
        names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
            [n.id for t in getattr(node, "targets", []) for n in ast.walk(t) if isinstance(n, ast.Name)]
        for name in names:
            defined.setdefault(name, node.lineno)
    order = {name: k for k, (_, name) in enumerate(sections)}
    found = {}
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            continue
        here = section_at(node.lineno)
        for used in ast.walk(node):
            if isinstance(used, ast.Name) and used.id in defined:
                there = section_at(defined[used.id])
                if there in LATE_ALLOWED or here == "(head)" or there == "(head)":
                    continue
                if order[there] > order[here]:
                    found.setdefault((here, there), set()).add("%s->%s" % (node.name, used.id))
    return found


def test_no_section_uses_a_section_below_it():
    assert later_uses(pm_source()) == {}


def test_the_section_checker_sees_a_use_of_a_later_section():
    """The check above can fail: a helper of the first section naming the command line's parser... is allowed,
    but one naming the Bundle is not."""
    source = pm_source()
    first = sections_of(source)[1][0]  # the line of the second banner: the first section's end
    planted = source.split("\n")
    planted.insert(first - 2, "def planted_helper():\n    return Bundle\n")
    assert ("planted_helper->Bundle" in set().union(*later_uses("\n".join(planted)).values()))


def over_c(source, exempt=()):
    return sorted("%s %s (%d)" % (cc_rank(block.complexity), block.fullname, block.complexity)
                  for block in cc_visit(source)
                  if cc_rank(block.complexity) not in "ABC" and block.fullname not in exempt)


def test_no_function_is_more_complex_than_radon_c():
    assert over_c(pm_source()) == []
    assert over_c(pm.PROBE_SOURCE, PROBE_COMMAND_LINE) == []


def test_the_carried_forms_pm_reads_are_the_forms_the_probe_writes():
    """One table each side (the probe cannot import pm): the archive forms, in the same order, with the
    same repodata keys; the unpacked form is pm's own."""
    archives = [(form.suffix, form.repodata_key) for form in pm.FORMS if form.repodata_key]
    assert archives == [tuple(form) for form in pm.PROBE.PACKAGE_FORMS]
    assert pm.carried_form("x-1-0.zip") is pm.UNPACKED and pm.carried_form("x-1-0.whl") is None


def fixes_of(source):
    """[(line, fix)] of every PmError(what, fix) in source: fix as written (a literal, a template or a name)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "PmError":
            fix = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "fix"), None)
            found.append((node.lineno, ast.unparse(fix) if fix is not None else None))
    return found


def written_out(fix):
    """The text of a fix written out (a literal, or the literal of a template), else None (a name)."""
    node = ast.parse(fix, mode="eval").body
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
        node = node.left
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def fix_rule_breaks(source):
    """Where a refusal's fix breaks the rule: every PmError names a fix; a fix written out is a lower-case
    imperative with no full stop, at one place only (one given in several is a FIX_ name or a local)."""
    breaks, seen = [], {}
    for line, fix in fixes_of(source):
        if fix is None:
            breaks.append("line %d: no fix" % line)
            continue
        text = written_out(fix)
        if text is None:
            continue
        if not text[:1].islower() or text.endswith("."):
            breaks.append("line %d: %s is not a lower-case imperative without a full stop" % (line, fix[:60]))
        if fix in seen:
            breaks.append("line %d: %s, as at line %d" % (line, fix[:60], seen[fix]))
        seen.setdefault(fix, line)
    return breaks


def test_each_refusal_names_its_fix_once_and_in_one_form():
    assert fix_rule_breaks(pm_source()) == []
    assert fix_rule_breaks(pm.PROBE_SOURCE) == []
    planted = 'raise PmError("a", "fix it.")\nraise PmError("b")\nraise PmError("c", "Pass %s" % x)\n' \
              'raise PmError("d", "fix it.")\n'
    assert len(fix_rule_breaks(planted)) == 5

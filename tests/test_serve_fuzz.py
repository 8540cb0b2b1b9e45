"""5,000 crafted requests (with a token, and again without), from a seeded generator, against a real pm.pyz server on 127.0.0.1.
After every one: a well-formed HTTP answer (or none, for a request with no request line), the
server still up, nothing written outside its store and no temp file left in it."""
import base64
import json
import os
import random
import re
import subprocess

import pytest

import pm
from conftest import find_python, run_pm
from servers import TOKEN, exchange, synthetic_bundle

CASES = 5000
SEED = 20261201

NAMES = ["fz", "fz-2", "a.b_c", "..", ".", "../x", "%2e%2e", "a/b", "a%2fb", "server.pid", "server.lock",
         "config", "CON", "caf\u00e9", "%00", "x" * 300, "", " ", "-x", "A" * 64, "n%0d%0aSet-Cookie:x",
         "%ff%fe", "bundles", ".incoming"]
PATHS = ["/migrate", "/migrate?token=" + TOKEN, "/migrate?token=wrong", "/bundles", "/bundles/", "/yml",
         "/min", "/zip", "/", "*", "//bundles", "/bundles/fz/../../x", "http://127.0.0.1/bundles",
         "/migrate?" + "a=" * 2000, "/%", "/\u00e9", "/bundles/fz?x=1#y"]


def random_bytes(rng, most=200):
    return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, most)))


def original_body(rng, bundle_bytes):
    """A body as the original probe posts it, {"name": ..., "data": base64}, often spoilt."""
    data = rng.choice([b"name: fz\ndependencies:\n  - python\n", b'["python"]', bundle_bytes[:300],
                       random_bytes(rng), "caf\u00e9".encode("latin-1")])
    encoded = base64.urlsafe_b64encode(data).decode()
    shapes = [
        {"name": rng.choice(NAMES), "data": encoded},
        {"name": rng.choice(NAMES)},
        {"data": encoded},
        {"name": rng.choice(NAMES), "data": encoded[:-3] + "!!!"},
        {"name": [1, 2], "data": encoded},
        {"name": "fz", "data": encoded, "extra": {"nested": [None, True, 1e308]}},
    ]
    text = json.dumps(rng.choice(shapes))
    spoil = rng.random()
    if spoil < 0.2:
        text = text[:rng.randint(0, len(text))]
    elif spoil < 0.3:
        text = "[" + text + "]"
    elif spoil < 0.35:
        text = '{"name": "' + "x" * 5000 + '", "data": ""}'
    return text.encode("utf-8")


def mutated_bundle(rng, bundle_bytes):
    data = bytearray(bundle_bytes)
    kind = rng.random()
    if kind < 0.3:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind < 0.6:
        data = data[:rng.randint(0, len(data))]
    elif kind < 0.7:
        data = bytearray(random_bytes(rng, 4000))
    return bytes(data)


def make_case(rng, bundle_bytes):
    """One request: its raw bytes, from a method, target, version, headers and a body."""
    method = rng.choice(["GET", "GET", "PUT", "PUT", "POST", "POST", "HEAD", "DELETE", "OPTIONS", "get",
                         "P\u00dcT", "X" * 70, ""])
    target = rng.choice(PATHS + ["/bundles/" + rng.choice(NAMES)] * 4)
    version = rng.choice(["HTTP/1.1"] * 6 + ["HTTP/1.0", "HTTP/9.9", "HTTP/1", "", "HTTP/1.1 extra"])
    if method in ("PUT",) and rng.random() < 0.6:
        body = mutated_bundle(rng, bundle_bytes) if rng.random() < 0.8 else bundle_bytes
    elif method == "POST" and rng.random() < 0.8:
        body = original_body(rng, bundle_bytes)
    else:
        body = random_bytes(rng) if rng.random() < 0.3 else b""
    headers = [("Host", rng.choice(["127.0.0.1", "localhost", "evil.example", "", "127.0.0.1:1", "[::1]", "a" * 300]))]
    if rng.random() < 0.85:
        headers.append(("Authorization", rng.choice(["Bearer " + TOKEN] * 6 + ["Bearer", "Bearer x", "Basic Zm86YmFy",
                                                                                "bearer " + TOKEN])))
    length = rng.random()
    if length < 0.6:
        headers.append(("Content-Length", str(len(body))))
    elif length < 0.7:
        headers.append(("Content-Length", str(len(body) + rng.randint(1, 1 << 20))))
    elif length < 0.75:
        headers.append(("Content-Length", str(max(0, len(body) - rng.randint(1, 50)))))
    elif length < 0.8:
        headers.append(("Content-Length", rng.choice(["-1", "abc", "1e3", " 12", "99999999999999999999", "0x10", ""])))
    elif length < 0.85:
        headers += [("Content-Length", str(len(body))), ("Content-Length", "0")]
    elif length < 0.9:
        headers.append(("Transfer-Encoding", "chunked"))
    if rng.random() < 0.2:
        headers.append(("X-Content-SHA256", rng.choice(["0" * 64, "zz", "", "A" * 64])))
    if rng.random() < 0.1:
        headers.append(("Origin", rng.choice(["http://evil.example", "null", "http://127.0.0.1"])))
    if rng.random() < 0.05:
        headers.append(("X-Long", "v" * rng.choice([100, 70000])))
    if rng.random() < 0.05:
        headers += [("X-Many-%d" % i, "1") for i in range(rng.choice([50, 150]))]
    head = ("%s %s %s" % (method, target, version)).strip()
    lines = [head] + ["%s: %s" % pair for pair in headers]
    if rng.random() < 0.05:
        lines.insert(1, rng.choice(["no colon here", " folded", ":", "\u00e9: x"]))
    raw_head = "\r\n".join(lines).encode("utf-8", "replace")
    if rng.random() < 0.03:
        raw_head = random_bytes(rng, 300).replace(b"\r\n\r\n", b"")
    return raw_head + b"\r\n\r\n" + body


ANSWER = re.compile(rb"^HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")


def check_answer(raw, answer, sandbox):
    """The answer is well formed, and a refusal names no path of the server's machine."""
    if not raw.split(b"\r\n", 1)[0].strip():
        return None  # no request line: http.server hangs up without a word, as HTTP allows
    match = ANSWER.match(answer)
    assert match, "not an HTTP answer to %r: %r" % (raw[:200], answer[:200])
    head, _, body = answer.partition(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)", head)
    if length and not raw.startswith(b"HEAD "):
        assert len(body) == int(length.group(1)), "body length differs from Content-Length: %r" % answer[:300]
    status = int(match.group(1))
    assert status != 500, "an internal error for %r: %r" % (raw[:300], answer[:300])
    assert sandbox.encode() not in body and b"Traceback" not in body
    return status


def files_under(folder):
    found = []
    for root, _, files in os.walk(folder):
        found += [os.path.join(root, f) for f in files]
    return found


@pytest.mark.parametrize("token", [TOKEN, None], ids=["token", "no-token"])
def test_five_thousand_crafted_requests_leave_the_server_up_and_the_disk_clean(token, pyz, tmp_path):
    sandbox = str(tmp_path)
    for folder in ("home", "tmp", "cwd"):
        os.mkdir(os.path.join(sandbox, folder))
    store, cache = os.path.join(sandbox, "store"), os.environ["XDG_CACHE_HOME"]  # the test's own code cache
    env = dict(os.environ, PM_HOME=store, HOME=os.path.join(sandbox, "home"), TMPDIR=os.path.join(sandbox, "tmp"))
    started = subprocess.run([find_python("newest"), pyz, "serve", "start", "--port", "0", "--timeout", "5",
                              "--max-bytes", str(1 << 20)] + (["--token", token] if token else ["--no-token"]),
                             cwd=os.path.join(sandbox, "cwd"), env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert started.returncode == 0, started.stderr
    with open(os.path.join(store, "server.pid")) as handle:
        record = json.load(handle)
    bundle_path = synthetic_bundle(os.path.join(sandbox, "fz.zip"), "fz", b"data")
    with open(bundle_path, "rb") as handle:
        bundle_bytes = handle.read()
    os.remove(bundle_path)
    rng = random.Random(SEED + (token is None))
    statuses = {}
    try:
        for case in range(CASES):
            raw = make_case(rng, bundle_bytes)
            status = check_answer(raw, exchange(record["port"], raw), sandbox)
            statuses[status] = statuses.get(status, 0) + 1
            os.kill(record["pid"], 0)  # still up
            outside = [f for f in files_under(sandbox) if not f.startswith((store + os.sep, cache + os.sep))]
            assert outside == [], "case %d (%r) wrote outside the store: %r" % (case, raw[:200], outside)
            leftovers = [f for f in files_under(store) if f.endswith(".part") or "/.incoming/" in f]
            assert leftovers == [], "case %d (%r) left temp files: %r" % (case, raw[:200], leftovers)
    finally:
        stopped = run_pm(find_python("newest"), pyz, ["serve", "stop"], env)
    print("fuzz: %d cases, answers %s" % (CASES, sorted(statuses.items(), key=str)))
    assert stopped.returncode == 0, stopped.stderr
    assert statuses.get(201, 0) > 0 and sum(v for k, v in statuses.items() if k and k >= 400) > CASES / 2
    for name in pm.Store(store).names(with_bundles=True):
        for revision in pm.Store(store).revisions(name):
            pm.Bundle.open(revision)  # whatever was stored checks

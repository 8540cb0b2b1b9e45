"""Benchmark: upload one large bundle to pm's server and to platform-migrator 1.1.0's server.

Both servers run on 127.0.0.1 in the same run. pm gets the bundle as PUT /bundles/NAME (its probe's
way) and also as POST /zip; the original gets it as POST /zip, a JSON body with the zip in urlsafe
base64 (its probe's way).
Each request body is prepared on disk first and streamed by the client, so the figures measure the
servers. Reported: wall time, throughput (bundle MiB/s) and the server's peak RSS (VmHWM).

The original is installed from PyPI into a throwaway venv; its server.py is started exactly as its
`platform-migrator server start` starts it (that command only adds a check for conda on PATH).
"""
import argparse
import base64
import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make_bundle(path, mib):
    """A valid pm bundle whose software is one incompressible file of mib MiB (stored, not deflated)."""
    members = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as bundle:
        for name, data in (("env.yml", b"name: big\ndependencies:\n  - python=3.11\n"), ("min-deps.json", b"[]")):
            bundle.writestr(name, data)
            members[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        digest = hashlib.sha256()
        with bundle.open("software/big/data.bin", "w", force_zip64=True) as out:
            block = os.urandom(1 << 20)
            for _ in range(mib):
                out.write(block)
                digest.update(block)
        members["software/big/data.bin"] = {"sha256": digest.hexdigest(), "size": mib << 20}
        manifest = {"format": 1, "name": "big", "created": "", "members": members, "software": {"dir": "big"}}
        bundle.writestr("manifest.json", json.dumps(manifest))


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def wait_port(port, deadline=20):
    end = time.time() + deadline
    while time.time() < end:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/migrate")
            connection.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("server on port %d did not answer" % port)


def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def upload(port, method, path, body_path, headers):
    size = os.path.getsize(body_path)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.time()
    connection.putrequest(method, path)
    connection.putheader("Content-Length", str(size))
    for key, value in headers.items():
        connection.putheader(key, value)
    connection.endheaders()
    with open(body_path, "rb") as handle:
        while True:
            block = handle.read(1 << 20)
            if not block:
                break
            connection.sendall(block) if hasattr(connection, "sendall") else connection.send(block)
    response = connection.getresponse()
    response.read()
    return response.status, time.time() - started


def run_pm_server(work, bundle, python, pyz):
    home = os.path.join(work, "pm-home")
    port = free_port()
    proc = subprocess.Popen([python, pyz, "serve", "--port", str(port), "--no-token"],
                            env=dict(os.environ, PM_HOME=home), stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        with open(bundle, "rb") as handle:
            digest = hashlib.sha256()
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        status, seconds = upload(port, "PUT", "/bundles/big", bundle, {"X-Content-SHA256": digest.hexdigest()})
        assert status == 201, status
        return seconds, vm_hwm_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def install_original(work):
    venv = os.path.join(work, "orig-venv")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", "platform-migrator==1.1.0"], check=True)
    python = os.path.join(venv, "bin", "python")
    package = subprocess.run([python, "-c", "import platform_migrator, os; print(os.path.dirname(platform_migrator.__file__))"],
                             stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.strip()
    return python, package


def legacy_body(bundle, body_path):
    """The original probe's POST /zip body for the bundle: JSON with the bytes in urlsafe base64."""
    if not os.path.exists(body_path):
        with open(bundle, "rb") as source, open(body_path, "wb") as out:
            out.write(b'{"name": "big", "data": "')
            while True:
                block = source.read(3 << 20)
                if not block:
                    break
                out.write(base64.urlsafe_b64encode(block))
            out.write(b'"}')
    return body_path


def run_pm_legacy(work, bundle, python, pyz):
    """pm's server taking the original protocol's POST /zip."""
    home = os.path.join(work, "pm-home")
    body_path = legacy_body(bundle, os.path.join(work, "orig-body.json"))
    port = free_port()
    proc = subprocess.Popen([python, pyz, "serve", "--port", str(port), "--no-token"],
                            env=dict(os.environ, PM_HOME=home), stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        status, seconds = upload(port, "POST", "/zip", body_path, {})
        assert status == 200, status
        kept = [os.path.join(home, "big", folder, "software.zip") for folder in ("original-parts", "legacy")]
        assert [os.path.getsize(p) for p in kept if os.path.exists(p)] == [os.path.getsize(bundle)]  # older pm: legacy/
        return seconds, vm_hwm_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def run_original_server(work, bundle, python, package):
    workdir = os.path.join(work, "orig-home")
    os.makedirs(workdir)
    body_path = legacy_body(bundle, os.path.join(work, "orig-body.json"))
    port = free_port()
    proc = subprocess.Popen([python, os.path.join(package, "server.py"), "127.0.0.1", str(port), workdir],
                            cwd=workdir, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        status, seconds = upload(port, "POST", "/zip", body_path, {})
        assert status == 200, status
        stored = os.path.join(workdir, "big", "pkg.zip")
        assert os.path.getsize(stored) == os.path.getsize(bundle)
        return seconds, vm_hwm_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="bundle size in MiB (default 1024)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for pm's server")
    parser.add_argument("--pm-only", action="store_true", help="skip the original (quick checks while tuning)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per server, alternating; medians reported")
    parser.add_argument("--baseline-pyz", metavar="PYZ",
                        help="also run another build of pm.pyz (e.g. the previous commit's) side by side")
    args = parser.parse_args()
    pyz = os.path.join(ROOT, "pm.pyz")
    work = tempfile.mkdtemp(prefix="pm-bench-")
    try:
        bundle = os.path.join(work, "big.zip")
        make_bundle(bundle, args.mib)
        mib = os.path.getsize(bundle) / 1048576.0
        original = None if args.pm_only else install_original(work)
        pm_runs, legacy_runs, orig_runs, base_runs, base_legacy_runs = [], [], [], [], []
        for _ in range(args.repeat):
            for runs, run, build in [(pm_runs, run_pm_server, pyz), (legacy_runs, run_pm_legacy, pyz)] + \
                    ([(base_runs, run_pm_server, args.baseline_pyz), (base_legacy_runs, run_pm_legacy,
                                                                       args.baseline_pyz)] if args.baseline_pyz else []):
                os.sync()
                runs.append(run(work, bundle, args.python, build))
                shutil.rmtree(os.path.join(work, "pm-home"), ignore_errors=True)
            if original:
                os.sync()
                orig_runs.append(run_original_server(work, bundle, *original))
                shutil.rmtree(os.path.join(work, "orig-home"), ignore_errors=True)
        print("upload of a %.0f MiB bundle over 127.0.0.1, %d runs each, medians" % (mib, args.repeat))
        print("%-31s %9s %11s %14s   %s" % ("server", "seconds", "MiB/s", "peak RSS MiB", "all runs (s)"))
        rows = [("pm (PUT /bundles)", pm_runs), ("pm (POST /zip, original's way)", legacy_runs)]
        rows += [("platform-migrator 1.1.0", orig_runs)] if original else []
        if args.baseline_pyz:
            rows += [("baseline pm (PUT /bundles)", base_runs), ("baseline pm (POST /zip)", base_legacy_runs)]
        medians = []
        for label, runs in rows:
            seconds = median([r[0] for r in runs])
            rss = max(r[1] for r in runs) / 1024.0
            medians.append((seconds, rss))
            print("%-31s %9.2f %11.1f %14.1f   %s" % (label, seconds, mib / seconds, rss,
                                                     " ".join("%.2f" % r[0] for r in runs)))
        if args.baseline_pyz:
            print("this build against the baseline: PUT %.2fx, POST /zip %.2fx the speed"
                  % (medians[-2][0] / medians[0][0], medians[-1][0] / medians[1][0]))
        if original:
            (pm_s, pm_rss), _, (orig_s, orig_rss) = medians[:3]
            print("throughput ratio pm/original: %.1fx; peak RSS ratio original/pm: %.1fx"
                  % (orig_s / pm_s, orig_rss / pm_rss))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

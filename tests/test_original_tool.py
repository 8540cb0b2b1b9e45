"""platform-migrator 1.1.0 itself beside pm: its probe uploads to `pm.pyz serve --no-token`, and pm
migrates a store that the original's own server wrote. The original is installed from its PyPI sdist
(conftest.original_tool); the base is a real conda 25.11.1 with the example environment; the base's
interpreter is Python 2.7, as on the old machines the original served."""
import os
import shutil
import socket
import subprocess
import urllib.request

import pm
from conftest import ROOT, find_python, read_result, attempt_dirs, run_pm, wait_until
from servers import Server

with open(os.path.join(ROOT, "examples", "heatsim-tests.ini")) as _handle:
    CONFIG = _handle.read()


def served_probe(original_tool, port, out):
    """The original's probe as its server hands it out: HOST and PORT filled in (server.py)."""
    with open(original_tool["probe"]) as handle:
        script = handle.read()
    with open(out, "w") as handle:
        handle.write(script.replace("HOST = None", 'HOST = "127.0.0.1"').replace("PORT = None", "PORT = %d" % port))
    return out


def run_original_probe(script, conda_site, software):
    """The original's dialogue on the base: name, directory, then 'n' (send, do not save a zip)."""
    env = conda_site.activated(conda_site.prefix("heatsim-env"))
    proc = subprocess.run([find_python("2.7"), script], input="heatsim\n%s\nn\n" % software, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert proc.returncode == 0 and "All data has been copied to target system." in proc.stdout, \
        proc.stdout + proc.stderr
    return proc


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(tmp_path):
    path = tmp_path / "tests.ini"
    path.write_text(CONFIG.format(out=str(tmp_path / "installed")))
    return str(path)


def test_the_original_probe_uploads_to_pm_serve_no_token_and_pm_migrates_it(pyz, conda_site, original_tool,
                                                                            example_software, tmp_path):
    srv = Server(pyz, conda_site.home, find_python("newest"), "", "--no-token")
    try:
        run_original_probe(served_probe(original_tool, srv.record["port"], str(tmp_path / "script.py")),
                           conda_site, example_software)
    finally:
        srv.stop()
    revisions = pm.Store(conda_site.home).revisions("heatsim")
    assert len(revisions) == 1
    bundle = pm.Bundle.open(revisions[0])
    assert "software/heatsim/tests/test_smooth.sh" in bundle.manifest.members
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path)], conda_site.env(),
                  timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "installed" / "heatsim" / "tests" / "test_smooth.sh").is_file()


def test_pm_migrates_a_store_that_the_original_server_wrote(pyz, conda_site, original_tool, example_software,
                                                             tmp_path):
    home = tmp_path / "user"
    os.makedirs(str(home / ".platform_migrator" / "config"))
    shutil.copy(original_tool["config"], str(home / ".platform_migrator" / "config"))  # as its pip install left it
    env = dict(conda_site.env(), HOME=str(home))
    env.pop("PM_HOME")
    port = free_port()
    with open(str(tmp_path / "original-server.log"), "w") as log:  # its server keeps the output open
        started = subprocess.run([original_tool["command"], "server", "--host", "127.0.0.1", "--port", str(port),
                                  "start"], env=env, stdout=log, stderr=subprocess.STDOUT, timeout=60)
    assert started.returncode == 0, (tmp_path / "original-server.log").read_text()
    try:
        def fetch_script():
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/migrate" % port, timeout=5) as answer:
                    return answer.read()
            except OSError:
                return None
        script = wait_until(fetch_script, timeout=20, every=0.2)
        assert script, "the original's server never answered"
        (tmp_path / "script.py").write_bytes(script)  # curl http://H:9001/migrate > script.py, as its docs say
        run_original_probe(str(tmp_path / "script.py"), conda_site, example_software)
    finally:
        subprocess.run([original_tool["command"], "server", "stop"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=60)
    written = sorted(os.listdir(str(home / ".platform_migrator" / "heatsim")))
    assert written == ["env.yml", "min-deps.json", "pkg.zip"], written
    listed = run_pm(find_python("newest"), pyz, ["list"], env)
    assert listed.returncode == 0 and "heatsim  (0 bundle revisions)  platform-migrator 1.1.0's files" in \
        listed.stdout, listed.stdout + listed.stderr
    assert sorted(os.listdir(str(home / ".platform_migrator" / "heatsim"))) == written, "list only reads"
    proc = run_pm(find_python("newest"), pyz, ["migrate", "heatsim", write_config(tmp_path)], env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = read_result(attempt_dirs(str(home / ".platform_migrator"), "heatsim")[-1])
    assert result["status"] == "passed" and result["bundle"].endswith(os.path.join("bundles", "0001.zip"))
    managers = run_pm(find_python("newest"), pyz, ["managers"], env)
    assert "holds platform-migrator 1.1.0's sections" in managers.stderr, managers.stderr

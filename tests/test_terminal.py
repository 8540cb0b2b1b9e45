"""What a terminal shows against a pipe: progress lines redrawn in place, colour and -q. The TTY
is a real pseudo-terminal (pty) around a real pm.pyz."""
import os
import pty
import select
import subprocess
import time

from conftest import ROOT, find_python, run_pm

with open(os.path.join(ROOT, "examples", "heatsim-tests.ini")) as _handle:
    CONFIG = _handle.read()


def under_pty(command, env, timeout=300):
    """Run command with stdin, stdout and stderr on a pseudo-terminal; return (exit code, output)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(command, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    output, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                block = os.read(master, 65536)
            except OSError:  # the other side closed
                break
            if not block:
                break
            output += block
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(timeout=30), output.decode("utf-8", "replace")


def big_software(tmp_path):
    software = tmp_path / "src" / "bigsim"
    (software / "data").mkdir(parents=True)
    for n in range(40):
        (software / "data" / ("chunk-%02d.bin" % n)).write_bytes(os.urandom(1 << 20))
    (software / "run.sh").write_text("echo ok\n")
    return str(software)


def test_pack_draws_its_progress_in_place_on_a_terminal_and_says_it_once_in_a_pipe(pyz, conda_site, tmp_path):
    software = big_software(tmp_path)
    args = [find_python("newest"), pyz, "pack", "-d", software, "-e", "heatsim-env", "--yes"]
    code, shown = under_pty(args + ["-o", str(tmp_path / "tty.zip")], conda_site.env())
    assert code == 0, shown
    assert "\rzipping bigsim: " in shown and " MiB/s, ETA " in shown and "% of" not in shown.split("\r")[-1]
    piped = run_pm(find_python("newest"), pyz, args[2:] + ["-o", str(tmp_path / "pipe.zip")], conda_site.env())
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and "zipping bigsim: 41 files, 40.0 MiB in " in piped.stderr
    quiet = run_pm(find_python("newest"), pyz, args[2:] + ["-o", str(tmp_path / "quiet.zip"), "-q"],
                   conda_site.env())
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_status_words_are_coloured_on_a_terminal_only_and_never_with_no_color(pyz, conda_site, tmp_path,
                                                                              heatsim_bundle):
    bundle = heatsim_bundle("newest")
    config = tmp_path / "tests.ini"
    config.write_text(CONFIG.format(out=str(tmp_path / "installed")))
    args = [find_python("newest"), pyz, "migrate", "heatsim", str(config), "--bundle", bundle, "--force"]
    code, shown = under_pty(args, conda_site.env())
    assert code == 0, shown
    assert "\x1b[32mpassed\x1b[0m" in shown
    code, plain = under_pty(args, dict(conda_site.env(), NO_COLOR="1"))
    assert code == 0 and "\x1b[" not in plain and "smooth               passed" in plain
    piped = run_pm(find_python("newest"), pyz, args[2:], conda_site.env())
    assert piped.returncode == 0 and "\x1b[" not in piped.stdout + piped.stderr
    quiet = run_pm(find_python("newest"), pyz, ["-q"] + args[2:], conda_site.env())
    assert quiet.returncode == 0 and "migrating heatsim" not in quiet.stderr and "passed" in quiet.stdout

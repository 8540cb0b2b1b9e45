#!/usr/bin/env bash
# What the tests need beyond .venv, checked (and installed where root can) before `make test` runs them:
# the Pythons the tests run pm.pyz under (found through pyenv or on PATH), Chromium for the HTML report,
# apt's package lists for the apt test, unshare for the air-gapped paths. Says what is missing, and how
# to get it, before a single test starts.
set -u
missing=0
root="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"
for v in 2.7 3.6 3.11 3.12 3.13; do   # 3.11: the pip-installed base (tests/pipbase.py); 3.12 runs real conda 25.11.1
  if ! ls -d "$root"/versions/$v.* >/dev/null 2>&1 && ! command -v "python$v" >/dev/null; then
    echo "tests: Python $v is missing: pyenv install $v (or put python$v on PATH)"; missing=1
  fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  # the apt test installs real Debian packages, and Chromium renders report.html: refresh the lists once a day
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mtime -1 2>/dev/null | head -1)" ]; then
    echo "tests: refreshing apt's package lists (apt-get update)"
    apt-get update -qq || echo "tests: warning: apt-get update failed; the apt test uses the lists already here"
  fi
  if ! command -v chromium >/dev/null; then
    echo "tests: installing chromium (the report test renders report.html in it)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null || true
  fi
fi
command -v chromium >/dev/null || { echo "tests: chromium is missing: apt-get install chromium (as root)"; missing=1; }
command -v unshare >/dev/null || { echo "tests: unshare is missing: apt-get install util-linux"; missing=1; }
[ "$(id -u)" = 0 ] || { echo "tests: the air-gapped, apt and tmpfs tests need root (unshare -n, apt-get, mount)"; missing=1; }
exit $missing

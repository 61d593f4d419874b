# Sourced by the scripts: picks the Python to use and exports PY.
# $PYTHON wins; else an existing .venv; else python3, unless it is a Debian-managed interpreter
# (PEP 668), in which case a .venv is created beside the checkout.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x "$root/.venv/bin/python" ]; then
  PY=$root/.venv/bin/python
elif python3 -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)' 2>/dev/null; then
  echo "python3 is managed by Debian: creating $root/.venv"
  python3 -m venv "$root/.venv" || { echo "install python3-venv (apt-get install python3-venv python3-dev) and retry" >&2; exit 1; }
  PY=$root/.venv/bin/python
else
  PY=python3
fi
export PY

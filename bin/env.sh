# Sourced by the bin/ scripts: creates ./.venv and installs jaxlm into it (editable, with the
# test extras) when it is missing or pyproject.toml changed since the last install.
set -euo pipefail
JAXLM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$JAXLM_ROOT/.venv"
STAMP="$VENV/.jaxlm-installed"
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV" >&2
  python3 -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ "$JAXLM_ROOT/pyproject.toml" -nt "$STAMP" ]; then
  echo "installing jaxlm and its dependencies into $VENV (log: $VENV/install.log)" >&2
  if ! { "$VENV/bin/python" -m pip install --upgrade pip \
         && "$VENV/bin/python" -m pip install -e "$JAXLM_ROOT[test]"; } >"$VENV/install.log" 2>&1
  then
    tail -n 40 "$VENV/install.log" >&2
    echo "pip install failed; full log in $VENV/install.log" >&2
    exit 1
  fi
  touch "$STAMP"
fi
cd "$JAXLM_ROOT"

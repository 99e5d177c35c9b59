#!/usr/bin/env bash
# The Windows leg: the README's demo and the suite on the Windows CPython that
# tests/windows/setup.sh made (python.org's 3.11.9 under Wine 8).
#   bash tests/windows/setup.sh && bash tests/windows/run.sh [PYTEST ARGS]
# 1. tests/windows/demo_check.py: the demo driven from other Windows processes;
# 2. tests/unit and tests/integration; POSIX-only tests skip by their marker, and a
#    test that only a gap of Wine keeps from running skips naming it (tests/wine.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache=${RIGPIPE_WINDOWS_CACHE:-$HOME/.cache/rigpipe/windows}
export WINEPREFIX="${cache}/prefix" WINEARCH=win64 WINEDEBUG=-all
python_exe="${WINEPREFIX}/drive_c/python311/python.exe"
# Wine's python.exe cannot take a regular file as stdout (init_sys_streams, WinError 6):
# its output always goes through a pipe.
winpython() { wine "${python_exe}" "$@" 2>&1 | cat; return "${PIPESTATUS[0]}"; }
cleanup() { wineserver -k >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "== Windows leg: $(winpython -c 'import sys; print(sys.version.split()[0], sys.platform)' | tr -d '\r') under $(wine --version)"
winpython -u tests/windows/demo_check.py
winpython -u -m pytest -p no:cacheprovider tests/unit tests/integration "$@"

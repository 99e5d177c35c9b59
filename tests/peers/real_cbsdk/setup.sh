#!/usr/bin/env bash
# A venv whose Python runs the real pycbsdk 10.x native library, for the
# real-library tests (tests/integration/test_blackrock_real.py).
#
#   bash tests/peers/real_cbsdk/setup.sh [DIR]     (DIR defaults to ~/.cache/rigpipe/real_cbsdk)
#
# pycbsdk 10.x ships manylinux_2_39 wheels: their libcbsdk.so needs glibc 2.38 and
# GLIBCXX_3.4.32. On an older system (Debian 12 has glibc 2.36) this script
# downloads, without installing, Debian 13's libc6, libstdc++6 and libgcc-s1
# into DIR/prefix and points a copied Python's interpreter and rpath at them
# with patchelf; nothing on the system changes. On glibc >= 2.38 the venv is a
# plain one. It prints the venv's python on its last line; the tests find it
# through RIGPIPE_REAL_CBSDK_PYTHON or DIR/venv/bin/python.
#
# Needs: apt-get, dpkg-deb and patchelf (Debian packages), and Debian's own
# /usr/bin/python3.11 (its libpython is linked statically, so relinking the
# interpreter binary is enough). Running it again reuses what is there.
set -euo pipefail

DIR="${1:-${RIGPIPE_REAL_CBSDK_DIR:-$HOME/.cache/rigpipe/real_cbsdk}}"
PYTHON="${RIGPIPE_REAL_CBSDK_BASE_PYTHON:-/usr/bin/python3.11}"
PYCBSDK="${RIGPIPE_PYCBSDK_VERSION:-pycbsdk>=10.3,<11}"
REPO="$(cd "$(dirname "$0")/../../.." && pwd)"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

say() { echo "real_cbsdk: $*" >&2; }

if [ ! -x "$PYTHON" ]; then
  say "$PYTHON is missing; install Debian's python3.11 (apt-get install python3.11 python3.11-venv)"
  exit 1
fi

glibc_minor="$(getconf GNU_LIBC_VERSION | sed -E 's/glibc 2\.([0-9]+).*/\1/')"
VENV="$DIR/venv"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv --copies "$VENV" 2>/dev/null || {
    say "venv creation failed; on Debian install python3.11-venv"; exit 1; }
  if [ "$glibc_minor" -lt 38 ]; then
    PREFIX="$DIR/prefix"
    LIB="$PREFIX/usr/lib/x86_64-linux-gnu"  # Debian 13 is merged-/usr
    if [ ! -e "$LIB/ld-linux-x86-64.so.2" ]; then
      command -v patchelf >/dev/null || { say "patchelf is missing: apt-get install patchelf"; exit 1; }
      APT="$DIR/apt"
      mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$APT/debs"
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        > "$APT/trixie.sources"
      opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$APT"
            -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache"
            -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
      say "downloading Debian 13's libc6, libstdc++6 and libgcc-s1 (glibc here is 2.$glibc_minor)"
      apt-get "${opts[@]}" -qq update
      (cd "$APT/debs" && apt-get "${opts[@]}" -qq download libc6 libstdc++6 libgcc-s1)
      mkdir -p "$PREFIX"
      for deb in "$APT/debs"/*.deb; do dpkg-deb -x "$deb" "$PREFIX"; done
    fi
    for binary in "$VENV"/bin/python "$VENV"/bin/python3 "$VENV"/bin/python3.11; do
      patchelf --set-interpreter "$LIB/ld-linux-x86-64.so.2" --force-rpath --set-rpath "$LIB" "$binary"
    done
    found="$("$VENV/bin/python" -c "import os; print(os.confstr('CS_GNU_LIBC_VERSION'))")"
    say "the venv's python now runs on $found"
  fi
fi

if ! "$VENV/bin/python" -c "import pycbsdk, sys; sys.exit(0 if pycbsdk.__version__.startswith('10.') else 1)" 2>/dev/null; then
  say "installing rigpipe and $PYCBSDK into $VENV"
  log="$DIR/pip.log"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
         "$VENV/bin/python" -m pip install --only-binary pycbsdk "$PYCBSDK" -e "$REPO[test]"; } >"$log" 2>&1; then
    tail -20 "$log" >&2; say "pip failed (whole log: $log)"; exit 1
  fi
fi
"$VENV/bin/python" - <<'PY'
import ctypes.util, pathlib, pycbsdk
lib = pathlib.Path(pycbsdk.__file__).parent
found = sorted(p.name for p in lib.rglob("libcbsdk*"))
if not found:
    raise SystemExit(f"real_cbsdk: pycbsdk {pycbsdk.__version__} has no native library in {lib}")
PY
echo "$VENV/bin/python"

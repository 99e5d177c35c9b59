#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian/Ubuntu machine (as root, or with sudo):
#   bash tests/setup.sh && python3 -m pytest
# - Mono (mcs): the STG tests compile a stand-in for the vendor's McsUsbNet.dll and load it
#   through pythonnet; tmux, the terminal the live-table test draws into; Xvfb and the X11
#   libraries Qt's xcb plugin loads, for the scope's real-window test;
# - rigpipe with its test extras (pip install -e ".[test]");
# - the real pycbsdk 10.x native library in a venv of its own (tests/peers/real_cbsdk/setup.sh;
#   it needs Debian's python3.11, python3.11-venv and patchelf), cached in
#   ~/.cache/rigpipe/real_cbsdk;
# - net.core.rmem_max >= 8388608, which the Blackrock SDK needs to start (raised, never lowered).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    mono-runtime libmono-2.0-1 mono-devel python3.11 python3.11-venv patchelf tmux \
    xvfb libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 \
    libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0 >/dev/null
python3 -m pip install -q -e ".[test]"
bash tests/peers/real_cbsdk/setup.sh >/dev/null
if [ -e /proc/sys/net/core/rmem_max ] && [ "$(cat /proc/sys/net/core/rmem_max)" -lt 8388608 ]; then
    $SUDO sysctl -q -w net.core.rmem_max=8388608
fi
echo "tests/setup.sh: ready (real pycbsdk: $HOME/.cache/rigpipe/real_cbsdk/venv/bin/python)"

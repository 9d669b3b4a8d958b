#!/usr/bin/env bash
# Fill wheels/ (ignored by git) with what tools/gpu-check.sh installs on the GPU host, which
# has Python 3.12, torch and triton but no network and no pydantic: CPython 3.12 manylinux
# x86-64 wheels of the project's pure-Python needs and the test tools, with their own
# dependencies.  Run here, where PyPI is reachable; the device tool then carries wheels/.
#   tools/gpu-wheels.sh [EXTRA_REQUIREMENT ...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
mkdir -p wheels
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# pip resolves the dependencies for the target (3.12, manylinux) and fetches only wheels.
"$PY" -m pip download --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d wheels pydantic pydantic-core PyYAML tabulate safetensors pytest hypothesis pytest-timeout "$@"
ls -l wheels
du -sh wheels

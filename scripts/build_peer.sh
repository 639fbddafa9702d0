#!/usr/bin/env bash
# Build llama.cpp's own llama-server (and llama-bench, llama-batched-bench) from the llama.cpp
# source that llama-cpp-python 0.3.36 vendors: the exact llama.cpp edgesrm binds, so that
# benchmarks/serve.py compares the two servers on the same kernels. For benchmarks only (CI does
# not build it); about 10 minutes on 2 cores. The build is cached outside the repository:
#   bash scripts/build_peer.sh            # -> ~/.cache/edgesrm/peer/llama.cpp/build/bin/llama-server
#   EDGESRM_PEER=/some/dir bash scripts/build_peer.sh
set -euo pipefail
VERSION=0.3.36
ROOT="${EDGESRM_PEER:-$HOME/.cache/edgesrm/peer}"
PY="${PYTHON:-python3}"
mkdir -p "$ROOT"
cd "$ROOT"
if [ ! -d llama.cpp ]; then
  "$PY" -m pip download --no-deps --no-binary :all: -d sdist "llama-cpp-python==$VERSION"
  tar -xzf "sdist/llama_cpp_python-$VERSION.tar.gz"
  mv "llama_cpp_python-$VERSION/vendor/llama.cpp" llama.cpp
  rm -rf "llama_cpp_python-$VERSION"
fi
cd llama.cpp
# GGML_NATIVE as edgesrm's own build. On a CPU with AMX run the server with --no-repack, as edgesrm
# loads weights without the extra buffer types there (see edgesrm/engine/backend.py).
cmake -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"${JOBS:-2}" --target llama-server llama-bench llama-batched-bench llama-quantize llama-imatrix llama-perplexity
echo "$ROOT/llama.cpp/build/bin/llama-server"

#!/usr/bin/env bash
# The atomic model of the continuum bench (bench/continuum.py): 6MSM, human CFTR, a deposited
# cryo-EM model, as shipped in the MDAnalysisTests sdist on PyPI. Downloaded once into a cache
# folder (never into the repository: the model is not ours to commit); prints its path.
#   bench/fetch_model.sh [CACHE_DIR]      (default: ${XDG_CACHE_HOME:-~/.cache}/live2d-bench)
# An sdist already at hand (MDAnalysisTests-2.7.0.tar.gz) can be put into CACHE_DIR first.
set -euo pipefail
cache="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/live2d-bench}"
sdist="$cache/MDAnalysisTests-2.7.0.tar.gz"
model="$cache/6msm.pdb.bz2"
mkdir -p "$cache"
if [[ ! -s "$model" ]]; then
    if [[ ! -s "$sdist" ]]; then
        pip download --no-deps --no-binary :all: --dest "$cache" MDAnalysisTests==2.7.0 >&2
    fi
    tar -xzf "$sdist" -O MDAnalysisTests-2.7.0/MDAnalysisTests/data/6msm.pdb.bz2 > "$model.part"
    mv "$model.part" "$model"
fi
echo "$model"

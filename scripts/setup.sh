#!/usr/bin/env bash
# Set up hierfedlora on a fresh Debian machine with Python 3.11: WordNet (the default data
# set) and Jane Austen's novels (the second data set, r-cran-janeaustenr; read without R by
# planner/fleets/r_lazyload.py, though Debian installs R with it), a virtual environment in .venv,
# the CPU build of torch first (so nothing pulls CUDA wheels), then the package with its dev
# extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/wordnet/data.noun ] || [ ! -f /usr/lib/R/site-library/janeaustenr/data/Rdata.rdx ]; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    wordnet-base r-cran-janeaustenr >/dev/null
fi

python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev]"
.venv/bin/hierfedlora --version

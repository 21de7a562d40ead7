#!/usr/bin/env bash
# Install pocketgrid with its server and test extras into .venv and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e ".[server,test]"
exec .venv/bin/python -m pytest -q -rs "$@"

#!/usr/bin/env bash
# Issue 10's acceptance: a fresh venv, the README's install command, then its run command, timed from the
# moment the install finishes. HOME is fresh too (no ~/.ladle store, no compiled-kernel cache), pip's cache is
# reused (as on a machine that has installed Python packages before).
set -euo pipefail
rm -rf /tmp/fresh && mkdir -p /tmp/fresh/home
git clone -q "${REPO:-$(git rev-parse --show-toplevel)}" /tmp/fresh/ladle
cd /tmp/fresh/ladle
python -m venv /tmp/fresh/venv
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}" HOME=/tmp/fresh/home PATH=/tmp/fresh/venv/bin:$PATH
t0=$(date +%s.%N)
pip install -q torch==2.13.0 && pip install -q -e ".[demo]"
t1=$(date +%s.%N)
answer=$(ladle run demo "The history of the printing press begins")
t2=$(date +%s.%N)
echo "install: $(echo "$t1 - $t0" | bc) s"
echo "first run: $(echo "$t2 - $t1" | bc) s"
echo "answer: ${answer:0:300}"
t3=$(date +%s.%N)
ladle run demo "The history of the printing press begins" > /dev/null
t4=$(date +%s.%N)
echo "second run (server already up): $(echo "$t4 - $t3" | bc) s"
ladle stop demo || true
pkill -f "/tmp/fresh/venv/bin/python.*ladle.*serve" || true

#!/bin/sh
# The client half of "pocketgrid demo", against the Compose sites, over TLS:
# log in with the demo user's certificate (made by the "pki" service; every
# peer is checked against the site CA, the token is saved 0600 under
# ~/.pocketgrid), wait for the three peers to form one system, submit the
# sample histogram analysis (one proc per input) through site-b (not the
# broker), follow it with long-polls, list and fetch every output (each
# verified by SHA-256).
set -eu

PEERS="${POCKETGRID_PEERS:-https://site-b:8650,https://site-a:8650}"
CA="${POCKETGRID_CA:-/pki/ca.pem}"
CERT="${DEMO_USER_CERT:-/pki/users/alice-demo.pem}"
KEY="${DEMO_USER_KEY:-/pki/users/alice-demo.key}"
SAMPLE=$(python -c 'import importlib.resources as r; print(r.files("pocketgrid") / "sample")')

pocketgrid login "$PEERS" --ca "$CA" --cert "$CERT" --key "$KEY"

echo "waiting for site-a, site-b and site-c to join..."
tries=0
until [ "$(pocketgrid status --system --peer "$PEERS" 2>/dev/null | grep -c 'https://')" -ge 3 ]; do
    tries=$((tries + 1))
    if [ "$tries" -ge 90 ]; then
        echo "the sites did not form a system; the last answer:" >&2
        pocketgrid status --system --peer "$PEERS" >&2 || true
        exit 1
    fi
    sleep 2
done
pocketgrid status --system --peer "$PEERS"

pocketgrid files --glob 'samples/*.txt' --peer "$PEERS"
JOB=$(pocketgrid submit --name histogram-demo --executable "$SAMPLE/histogram.py" --submit-file "$SAMPLE/histogram.sub" --peer "$PEERS" samples/run000.txt samples/run001.txt samples/run002.txt samples/run003.txt samples/run004.txt samples/run005.txt | awk 'NR == 1 {print $1}')
echo "submitted $JOB"
pocketgrid status "$JOB" --wait --peer "$PEERS"
pocketgrid outputs "$JOB" --peer "$PEERS"
pocketgrid fetch "$JOB" -o /results --no-progress --peer "$PEERS"
echo "demo finished: outputs of $JOB are in /results/$JOB"

#!/bin/bash
# Entry point of a pocketgrid site container: "pocketgrid-site serve --name ... --executor condor".
#
# 1. Start the HTCondor personal pool the way the htcondor/mini image does
#    (/start.sh: supervisord runs condor_master as root), in the background.
# 2. Wait until its schedd answers the job owner.
# 3. Optionally publish sample inputs (POCKETGRID_SAMPLE_INPUTS=N: N files
#    under <publish>/samples/, as "pocketgrid demo" makes them).
# 4. Run "pocketgrid <arguments>" as the unprivileged account "pocketgrid":
#    the schedd never lets root own jobs (and the peer refuses
#    "--executor condor" as root), jobs run as that account, and they write
#    their outputs into its staging directories.
set -euo pipefail

OWNER=pocketgrid
STATE=/var/lib/pocketgrid
PUBLISH=/srv/publish

/start.sh >/var/log/pocketgrid-minicondor.log 2>&1 &

for _ in $(seq 1 120); do
    if runuser -u "$OWNER" -- condor_q -totals >/dev/null 2>&1; then
        break
    fi
    sleep 1
done
runuser -u "$OWNER" -- condor_q -totals >/dev/null || {
    echo "pocketgrid-site: the HTCondor schedd did not come up; see /var/log/pocketgrid-minicondor.log" >&2
    exit 1
}

install -d -o "$OWNER" -g "$OWNER" "$STATE" "$PUBLISH"
if [[ -n "${POCKETGRID_SAMPLE_INPUTS:-}" ]]; then
    runuser -u "$OWNER" -- /opt/pocketgrid/bin/python -c \
        'import sys; from pathlib import Path; from pocketgrid.demo import make_sample_data; make_sample_data(Path(sys.argv[1]), int(sys.argv[2]))' \
        "$PUBLISH" "$POCKETGRID_SAMPLE_INPUTS"
fi

exec runuser -u "$OWNER" -- env HOME="/home/$OWNER" /opt/pocketgrid/bin/pocketgrid "$@"

#!/bin/bash
# Entry point of a pocketgrid site container:
# "pocketgrid-site serve --name NAME --pki /etc/pocketgrid/pki --executor condor ...".
#
# 0. TLS material (POCKETGRID_PKI_SOURCE=DIR, the shared PKI volume, read-only,
#    made by the "pki" service): copy DIR/ca.pem and this peer's
#    DIR/hosts/NAME.pem|.key (NAME from --name) into $PKI, owned by the job
#    owner, the key 0600.  In the volume the keys are root's (0600, in 0700
#    directories), so the unprivileged peer could not read them there; it gets
#    its own host key and nothing else.  Pass "--pki $PKI" to the peer.
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
PKI=/etc/pocketgrid/pki   # what "--pki" names in docker-compose.yml

# The value of --name in the arguments ("--name X" or "--name=X").
peer_name() {
    local prev=""
    for arg in "$@"; do
        if [[ "$prev" == --name ]]; then
            printf '%s\n' "$arg"
            return
        fi
        if [[ "$arg" == --name=* ]]; then
            printf '%s\n' "${arg#--name=}"
            return
        fi
        prev="$arg"
    done
}

if [[ -n "${POCKETGRID_PKI_SOURCE:-}" ]]; then
    name="$(peer_name "$@")"
    [[ -n "$name" ]] || { echo "pocketgrid-site: POCKETGRID_PKI_SOURCE needs --name NAME to pick hosts/NAME.pem" >&2; exit 1; }
    for f in ca.pem "hosts/$name.pem" "hosts/$name.key"; do
        [[ -f "$POCKETGRID_PKI_SOURCE/$f" ]] || {
            echo "pocketgrid-site: no $POCKETGRID_PKI_SOURCE/$f (the pki service makes it: docker compose logs pki)" >&2
            exit 1
        }
    done
    rm -rf "$PKI"   # a restarted container copies afresh
    (
        umask 077
        install -d -m 0755 "$(dirname "$PKI")"
        install -d -m 0700 -o "$OWNER" -g "$OWNER" "$PKI" "$PKI/hosts"
        install -m 0644 -o "$OWNER" -g "$OWNER" "$POCKETGRID_PKI_SOURCE/ca.pem" "$PKI/ca.pem"
        install -m 0644 -o "$OWNER" -g "$OWNER" "$POCKETGRID_PKI_SOURCE/hosts/$name.pem" "$PKI/hosts/$name.pem"
        install -m 0600 -o "$OWNER" -g "$OWNER" "$POCKETGRID_PKI_SOURCE/hosts/$name.key" "$PKI/hosts/$name.key"
    )
fi

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

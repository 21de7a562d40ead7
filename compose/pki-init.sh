#!/bin/sh
# The one-shot "pki" service of compose/docker-compose.yml:
#
#     pocketgrid-pki-init SITE...
#
# makes the site PKI in the shared volume once: the site CA, one host
# certificate per SITE (SANs: SITE, localhost, 127.0.0.1) and the demo
# user's login certificate.  If $PKI_DIR/ca.pem exists there is nothing to do
# (to start over: docker compose -f compose/docker-compose.yml down -v).
#
#   PKI_DIR         shared volume: ca.pem, hosts/<site>.pem|.key, users/<user>.pem|.key
#   PKI_CA_DIR      private volume, mounted by this service only: ca.key (and a
#                   copy of ca.pem, so it is a CA directory "pocketgrid pki" can
#                   issue more certificates from); the key that signs
#                   certificates never reaches a site or the client
#   PKI_USER_OWNER  the account the user's certificate and key are given to
#                   (the client image's "client"; empty: leave them to root)
#   DEMO_USER_CN, DEMO_USER_VO   the demo user (subject CN=<cn>,OU=<vo>,O=pocketgrid)
#
# Everything is made in $PKI_DIR/.staging and moved into place with ca.pem
# last, so an interrupted run leaves no ca.pem and the next run starts over.
# Private keys are 0600 and directories 0700 (pocketgrid pki makes them so);
# the site entry point (site-entrypoint.sh) copies its own host key for the
# unprivileged account that runs the peer.
set -eu

PKI="${PKI_DIR:-/pki}"
CA_DIR="${PKI_CA_DIR:-/pki-ca}"
USER_OWNER="${PKI_USER_OWNER-client}"
USER_CN="${DEMO_USER_CN:-Alice Demo}"
USER_VO="${DEMO_USER_VO:-demo}"
STAGE="$PKI/.staging"

[ "$#" -gt 0 ] || { echo "usage: pocketgrid-pki-init SITE..." >&2; exit 2; }

if [ -e "$PKI/ca.pem" ]; then
    echo "pki: $PKI/ca.pem exists, nothing to do"
    exit 0
fi

umask 077
rm -rf "$STAGE" "$PKI/hosts" "$PKI/users"   # what an interrupted run left
mkdir -p "$CA_DIR"

pocketgrid pki init-ca --dir "$STAGE" --cn "pocketgrid compose CA"
for site in "$@"; do
    pocketgrid pki issue-host "$site" --san "$site" --san localhost --san 127.0.0.1 --dir "$STAGE"
done
pocketgrid pki issue-user "$USER_CN" --vo "$USER_VO" --dir "$STAGE"

if [ -n "$USER_OWNER" ]; then
    chown -R "$USER_OWNER:" "$STAGE/users"
fi
mv "$STAGE/hosts" "$STAGE/users" "$PKI/"
mv "$STAGE/ca.key" "$CA_DIR/ca.key"
cp "$STAGE/ca.pem" "$CA_DIR/ca.pem"
chmod 0755 "$PKI"                          # ca.pem is public; hosts/ and users/ stay 0700
mv "$STAGE/ca.pem" "$PKI/ca.pem"           # last: its presence means the PKI is complete
rmdir "$STAGE"
echo "pki: made $PKI (CA, hosts: $*; user: $USER_CN, VO $USER_VO)"

#!/usr/bin/env bash
# The base install, as a weak device gets it: build pocketgrid's wheel, install it with NO extras into a
# fresh venv (its dependencies from PyPI), and check that it is a working client:
#   * no server package was installed (flask, sqlalchemy, psutil, htcondor, gunicorn, ...);
#   * `pocketgrid --help` and every command's and sub-command's --help work (client commands and pki);
#   * importing mobile_client and the CLI's client path loads no server package;
#   * a few client commands really run (pki, and network commands against a peer that is down) without a
#     traceback;
#   * the server commands (serve, agent, demo, doctor, db, backup, restore) say which extra to install instead of a traceback.
# Prints the size of the base install.  Run from anywhere; uses $PYTHON (default python3, >= 3.11).
# CI runs it (.ci/run) before the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
SERVER_PACKAGES="flask werkzeug sqlalchemy alembic psutil htcondor htcondor2 classad2 gunicorn psycopg yaml jwt"
EXTRA_HINT='pip install "pocketgrid[server]"'

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pocketgrid-thin.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
fail() { echo "check_thin_client: FAIL: $*" >&2; exit 1; }
step() { echo "check_thin_client: $*"; }

step "building the wheel"
"$PYTHON" -m pip wheel -q --no-deps -w "$WORK/wheel" "$REPO" >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; fail "pip wheel"; }
WHEEL=$(ls "$WORK"/wheel/pocketgrid-*.whl)

step "fresh venv, base install only ($(basename "$WHEEL"), dependencies from PyPI)"
"$PYTHON" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
quiet() { "$@" >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; fail "$*"; }; }
quiet "$VPY" -m pip download -q -d "$WORK/deps" "$WHEEL"
quiet "$VPY" -m pip install -q --no-index --find-links "$WORK/deps" "$WHEEL"
PG="$WORK/venv/bin/pocketgrid"

# Run everything from outside the checkout, so nothing is imported from the repository.
cd "$WORK"
export HOME="$WORK/home" POCKETGRID_HOME="$WORK/home/.pocketgrid"
mkdir -p "$HOME"
unset POCKETGRID_PEERS || true

step "no server package is installed"
"$VPY" - $SERVER_PACKAGES <<'EOF' || fail "the base install pulled in server packages"
import importlib.util, sys
present = [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None]
if present:
    print("installed although not asked for:", ", ".join(present), file=sys.stderr)
    sys.exit(1)
EOF

step "importing the client loads no server package"
"$VPY" - $SERVER_PACKAGES <<'EOF' || fail "a client import loads server code"
import importlib, pkgutil, sys
import mobile_client
# every module of the client library, and the base package's client-side modules
names = ["mobile_client." + m.name for m in pkgutil.walk_packages(mobile_client.__path__) if not m.ispkg]
names += ["pocketgrid", "pocketgrid.cli", "pocketgrid.http", "pocketgrid.transfer", "pocketgrid.errors",
          "pocketgrid.pki", "pocketgrid.pki_cli"]
for name in names:
    importlib.import_module(name)
from pocketgrid.cli import build_parser
build_parser().parse_args(["status"])
server = set(sys.argv[1:]) | {"peer", "broker", "ema_agent"}
bad = sorted(m for m in sys.modules if m.split(".")[0] in server)
if bad:
    print("loaded:", ", ".join(bad), file=sys.stderr)
    sys.exit(1)
print(f"  imported {len(names)} modules")
EOF

step "every command's --help"
COMMANDS=$("$VPY" - <<'EOF'
import argparse
from pocketgrid.cli import build_parser

def walk(parser, path):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield path + [name]
                yield from walk(child, path + [name])

for cmd in walk(build_parser(), []):
    print(" ".join(cmd))
EOF
)
"$PG" --help >"$WORK/out" 2>&1 || fail "pocketgrid --help: $(cat "$WORK/out")"
"$PG" --version >"$WORK/out" 2>&1 || fail "pocketgrid --version: $(cat "$WORK/out")"
n=0
while read -r -a cmd; do
  rc=0
  "$PG" "${cmd[@]}" --help >"$WORK/out" 2>&1 || rc=$?
  case "${cmd[0]}" in
    serve|agent|demo|doctor|db|backup|restore)  # server commands: one line naming the extra
      [ "$rc" = 2 ] && grep -qF "$EXTRA_HINT" "$WORK/out" && ! grep -q Traceback "$WORK/out" \
        || fail "pocketgrid ${cmd[*]} --help (rc $rc) should name the server extra: $(cat "$WORK/out")";;
    *)
      [ "$rc" = 0 ] && grep -q "usage: pocketgrid ${cmd[*]}" "$WORK/out" \
        || fail "pocketgrid ${cmd[*]} --help (rc $rc): $(cat "$WORK/out")";;
  esac
  n=$((n + 1))
done <<<"$COMMANDS"
step "  $n commands: $(echo "$COMMANDS" | tr '\n' ',' | sed 's/,$//; s/,/, /g')"

step "client commands run (pki offline; network commands against a peer that is down)"
"$PG" pki init-ca --dir "$WORK/pki" >/dev/null || fail "pki init-ca"
"$PG" pki issue-user "Thin Client" --vo test --dir "$WORK/pki" >/dev/null || fail "pki issue-user"
"$PG" pki show "$WORK/pki/ca.pem" >/dev/null || fail "pki show"
DOWN=$("$VPY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
for cmd in "status" "files" "status --system" "whoami"; do
  rc=0
  # shellcheck disable=SC2086
  timeout 120 "$PG" $cmd --peer "https://127.0.0.1:$DOWN" --ca "$WORK/pki/ca.pem" >"$WORK/out" 2>&1 || rc=$?
  if [ "$rc" = 0 ] || [ "$rc" -ge 124 ] || grep -q "Traceback" "$WORK/out"; then
    fail "pocketgrid $cmd against a peer that is down (rc $rc): $(cat "$WORK/out")"
  fi
done

step "server commands name the extra"
for cmd in "serve --name thin --state $WORK/state --insecure-http" "demo" "doctor --state $WORK/state" "db current --state $WORK/state" "backup --state $WORK/state --output $WORK/b.tar" "agent --peer https://127.0.0.1:$DOWN --name x --once"; do
  rc=0
  # shellcheck disable=SC2086
  timeout 60 "$PG" $cmd >"$WORK/out" 2>&1 || rc=$?
  [ "$rc" = 2 ] && grep -qF "$EXTRA_HINT" "$WORK/out" && ! grep -q Traceback "$WORK/out" \
    || fail "pocketgrid $cmd (rc $rc) should name the server extra: $(cat "$WORK/out")"
done
step "  e.g.: $(head -n1 "$WORK/out")"

step "size of the base install"
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
total=$(du -sk "$SITE" | cut -f1)
tooling=0
for p in "$SITE"/pip "$SITE"/pip-*.dist-info "$SITE"/setuptools "$SITE"/setuptools-*.dist-info \
         "$SITE"/pkg_resources "$SITE"/_distutils_hack "$SITE"/distutils-precedence.pth; do
  [ -e "$p" ] && tooling=$((tooling + $(du -sk "$p" | cut -f1)))
done
echo "  site-packages without pip/setuptools: $(( (total - tooling) / 1024 )).$(( (total - tooling) % 1024 * 10 / 1024 )) MB ($((total - tooling)) KiB)"
echo "  wheels downloaded (pocketgrid and its dependencies):"
(cd "$WORK/deps" && find . -maxdepth 1 -type f \( -name '*.whl' -o -name '*.tar.gz' \) -printf '%s %f\n' | sort -k2 | awk '{ printf "    %8.0f KiB  %s\n", $1 / 1024, $2; s += $1 } END { printf "    %8.0f KiB  total\n", s / 1024 }')
step "OK: the base install is a working client"

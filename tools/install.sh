#!/bin/sh
# Install the gateway as a hardened systemd service with an A/B release layout.
#
#   sudo tools/install.sh [--board NAME] [--prefix /opt/gateway] [--config-dir /etc/gateway]
#                         [--state-dir /var/lib/gateway] [--user gateway] [--no-start]
#   tools/install.sh --dest DIR ...   # stage into DIR (no user, no systemctl): packaging, tests
#
# Layout:   PREFIX/venv             dependencies (root-owned)
#           PREFIX/launcher.py      starts current, rolls back crashing releases (root-owned)
#           PREFIX/slots/releases/A first release; OTA unpacks into the other slot
#           PREFIX/slots/current -> releases/A
#           CONFIG/gateway.yaml     config (kept if present), keys 0600 owned by the user
#           STATE                   store, fleet state (trials, downloads)
# Re-running it upgrades the venv, launcher and unit but never touches the slots of an
# installed gateway (use OTA for releases) unless --force-release.
set -eu

SRC=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=/opt/gateway
CONFIG=/etc/gateway
STATE=/var/lib/gateway
USER_NAME=gateway
BOARD=generic-linux
DEST=
START=1
FORCE_RELEASE=0
PYTHON=${PYTHON:-python3}

while [ $# -gt 0 ]; do
  case "$1" in
    --board) BOARD=$2; shift 2 ;;
    --prefix) PREFIX=$2; shift 2 ;;
    --config-dir) CONFIG=$2; shift 2 ;;
    --state-dir) STATE=$2; shift 2 ;;
    --user) USER_NAME=$2; shift 2 ;;
    --dest) DEST=$2; shift 2 ;;
    --no-start) START=0; shift ;;
    --force-release) FORCE_RELEASE=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

say() { echo "install: $*"; }
D=${DEST%/}   # staging root ("" = the live system)
[ -f "$SRC/boards/$BOARD.yaml" ] || { echo "install.sh: no board profile boards/$BOARD.yaml" >&2; exit 2; }
if [ -z "$D" ] && [ "$(id -u)" -ne 0 ]; then echo "install.sh: run as root (or use --dest DIR)" >&2; exit 2; fi

# 1. the service user, in the serial (dialout) group
if [ -z "$D" ]; then
  if ! id "$USER_NAME" >/dev/null 2>&1; then
    say "creating system user $USER_NAME"
    useradd --system --home-dir "$STATE" --no-create-home --shell /usr/sbin/nologin \
      --groups dialout "$USER_NAME"
  else
    usermod -a -G dialout "$USER_NAME"
  fi
fi
own() { [ -z "$D" ] && chown "$@" || true; }

# 2. directories
umask 022
mkdir -p "$D$PREFIX/slots/releases" "$D$CONFIG" "$D$STATE/fleet"
chmod 0750 "$D$STATE" "$D$STATE/fleet"
own -R "$USER_NAME:$USER_NAME" "$D$STATE" "$D$PREFIX/slots"

# 3. dependencies in a venv (releases carry only the pure-Python gateway package)
if [ -z "$D" ] || [ "${INSTALL_VENV:-0}" = 1 ]; then
  [ -x "$D$PREFIX/venv/bin/python3" ] || "$PYTHON" -m venv "$D$PREFIX/venv"
  DEPS=$("$PYTHON" -c 'import configparser,sys; c=configparser.ConfigParser(); c.read(sys.argv[1]); print(" ".join(l.strip() for l in c["options"]["install_requires"].splitlines() if l.strip()))' "$SRC/setup.cfg")
  say "installing dependencies: $DEPS"
  # shellcheck disable=SC2086
  "$D$PREFIX/venv/bin/pip" install -q $DEPS
fi

# 4. the first release into slot A (an installed gateway is updated by OTA, not here)
VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$SRC/gateway/__init__.py")
if [ ! -e "$D$PREFIX/slots/current" ] || [ "$FORCE_RELEASE" = 1 ]; then
  say "release $VERSION -> $PREFIX/slots/releases/A"
  rm -rf "$D$PREFIX/slots/releases/A"
  mkdir -p "$D$PREFIX/slots/releases/A"
  (cd "$SRC" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - gateway boards) |
    (cd "$D$PREFIX/slots/releases/A" && tar -xf -)
  printf '{"name": "meter-gateway", "version": "%s", "security_version": 0}\n' "$VERSION" \
    > "$D$PREFIX/slots/releases/A/RELEASE.json"
  ln -sfn releases/A "$D$PREFIX/slots/current.new" && mv -T "$D$PREFIX/slots/current.new" "$D$PREFIX/slots/current"
  own -R "$USER_NAME:$USER_NAME" "$D$PREFIX/slots"
else
  say "keeping the installed release ($(readlink "$D$PREFIX/slots/current"))"
fi

# 5. the launcher, outside the slots and not writable by the service
install -m 0644 "$SRC/gateway/fleet/launcher.py" "$D$PREFIX/launcher.py"

# 6. config: a starting point if there is none; private keys 0600, owned by the service user
if [ ! -e "$D$CONFIG/gateway.yaml" ]; then
  say "writing a config template to $CONFIG/gateway.yaml (edit uplink and drivers)"
  cat > "$D$CONFIG/gateway.yaml" <<YAML
gateway: {id: $(hostname -s 2>/dev/null || echo gw-0001), board: $BOARD}
store: {path: $STATE/store.db, max_bytes: 512MiB}
uplink:
  host: broker.example.net
  ca: keys/ca.pem
  cert: keys/gateway.pem
  key: keys/gateway.key
  signing_key: keys/gateway-sign.key
fleet:
  command_keys: [keys/headend-cmd.pub]
  release_keys: [keys/release.pub]
  releases_dir: $PREFIX/slots
  state_dir: $STATE/fleet
control: {socket: /run/gateway/control.sock}
drivers:
  - {type: simulated, name: sim, meters: 10, interval_s: 60}
YAML
fi
mkdir -p "$D$CONFIG/keys"
chmod 0750 "$D$CONFIG" "$D$CONFIG/keys"
for k in "$D$CONFIG"/keys/*.key "$D$CONFIG"/*.key; do
  [ -e "$k" ] || continue
  chmod 0600 "$k"
done
chmod 0640 "$D$CONFIG/gateway.yaml"
own -R "$USER_NAME:$USER_NAME" "$D$CONFIG"

# 7. the unit (paths rewritten if not the defaults) and the hardware watchdog of the board
mkdir -p "$D/etc/systemd/system"
sed -e "s#/opt/gateway/slots#$PREFIX/slots#g" -e "s#/opt/gateway/#$PREFIX/#g" \
    -e "s#/var/lib/gateway#$STATE#g" -e "s#/etc/gateway#$CONFIG#g" \
    -e "s#^User=gateway#User=$USER_NAME#" -e "s#^Group=gateway#Group=$USER_NAME#" \
    "$SRC/tools/systemd/gateway.service" > "$D/etc/systemd/system/gateway.service"
WD=$(sed -n 's/^watchdog: {device: \([^,]*\), timeout_s: \([0-9]*\)}.*/\1 \2/p' "$SRC/boards/$BOARD.yaml")
if [ -n "$WD" ]; then
  set -- $WD
  say "board $BOARD: hardware watchdog $1 (${2}s) driven by systemd"
  mkdir -p "$D/etc/systemd/system.conf.d"
  printf '[Manager]\nWatchdogDevice=%s\nRuntimeWatchdogSec=%s\n' "$1" "$2" \
    > "$D/etc/systemd/system.conf.d/gateway-watchdog.conf"
fi
# the reboot command (mode: system) goes through logind; allow it for the service user only
if [ -d "$D/etc/polkit-1" ] || [ -n "$D" ]; then
  mkdir -p "$D/etc/polkit-1/rules.d"
  cat > "$D/etc/polkit-1/rules.d/50-gateway-reboot.rules" <<JS
polkit.addRule(function(action, subject) {
  if (action.id == "org.freedesktop.login1.reboot" && subject.user == "$USER_NAME") {
    return polkit.Result.YES;
  }
});
JS
fi

if [ -z "$D" ]; then
  systemctl daemon-reload
  systemctl enable gateway.service
  if [ "$START" = 1 ]; then
    "$PREFIX/venv/bin/python3" -c 'import sys; sys.path.insert(0, sys.argv[1]); from gateway.cli import main; sys.exit(main(["check-config", sys.argv[2]]))' \
      "$PREFIX/slots/current" "$CONFIG/gateway.yaml" && systemctl restart gateway.service \
      || say "config not valid yet: fix $CONFIG/gateway.yaml, then: systemctl start gateway"
  fi
fi
say "done: $PREFIX (release $(readlink "$D$PREFIX/slots/current")), config $CONFIG, state $STATE"

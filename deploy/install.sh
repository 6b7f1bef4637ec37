#!/bin/sh
# Install the sonitor runtime as a systemd service on a Debian/Ubuntu industrial PC.
#
# Idempotent: run it again to upgrade. It creates the system user `sonitor` (groups sonitor and
# audio), a virtualenv in /opt/sonitor with the runtime only (`pip install <repo>`: numpy,
# onnxruntime, ... and no torch) at the versions pinned in deploy/constraints.txt (every PC gets
# the same builds, whenever it is installed), /etc/sonitor/config.yaml from config.example.yaml when there
# is none (an existing config is never touched), /var/lib/sonitor and /var/log/sonitor, the unit
# /etc/systemd/system/sonitor.service, and runs `systemctl daemon-reload`. It does not enable or
# start the service: edit the config and run `sonitor check-config` first (docs/deploy.md).
#
# Usage: sudo deploy/install.sh [--dry-run] [--root DIR] [--prefix DIR] [--python PY]
#                               [--source SPEC] [--constraints FILE] [--skip-venv]
#   --dry-run     print every step, change nothing
#   --root DIR    install below DIR (like DESTDIR; also read from $DESTDIR): for packaging and
#                 tests. Steps that act on the running system (useradd, chown, systemctl) are
#                 skipped and said so.
#   --prefix DIR  virtualenv location (default /opt/sonitor; the unit's ExecStart expects it)
#   --python PY   interpreter for the virtualenv (default python3; 3.10 or newer)
#   --source SPEC what pip installs (default: this repository). Extra pip arguments come from
#                 $PIP_ARGS, e.g. PIP_ARGS="--no-index --find-links /media/usb/wheels" offline.
#   --constraints FILE  pinned versions for pip (default deploy/constraints.txt; `none`: the
#                 newest releases; regenerate the file with deploy/constraints.py)
#   --skip-venv   leave the virtualenv alone (you manage it yourself)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
ROOT=${DESTDIR:-}
PREFIX=/opt/sonitor
PYTHON=python3
SOURCE=$REPO
CONSTRAINTS=$HERE/constraints.txt
DRY_RUN=0
SKIP_VENV=0
SERVICE_USER=sonitor
UNIT_NAME=sonitor.service

usage() {
    sed -n '2,/^set -eu/p' "$0" | sed -e '/^set -eu/d' -e 's/^# \{0,1\}//'
}

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --root) ROOT=${2:?--root needs a folder}; shift ;;
        --root=*) ROOT=${1#--root=} ;;
        --prefix) PREFIX=${2:?--prefix needs a folder}; shift ;;
        --prefix=*) PREFIX=${1#--prefix=} ;;
        --python) PYTHON=${2:?--python needs an interpreter}; shift ;;
        --python=*) PYTHON=${1#--python=} ;;
        --source) SOURCE=${2:?--source needs a path or requirement}; shift ;;
        --source=*) SOURCE=${1#--source=} ;;
        --constraints) CONSTRAINTS=${2:?--constraints needs a file or none}; shift ;;
        --constraints=*) CONSTRAINTS=${1#--constraints=} ;;
        --skip-venv) SKIP_VENV=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT=${ROOT%/}
case "$PREFIX" in
    /*) ;;
    *) echo "install.sh: --prefix must be an absolute path, got '$PREFIX'" >&2; exit 2 ;;
esac
# A root other than / means "stage the files there": leave the running system alone.
LIVE=1
[ -n "$ROOT" ] && LIVE=0

CONF_DIR=$ROOT/etc/sonitor
STATE_DIR=$ROOT/var/lib/sonitor
LOG_DIR=$ROOT/var/log/sonitor
UNIT_DIR=$ROOT/etc/systemd/system
VENV=$ROOT$PREFIX

say() { printf '%s\n' "$*"; }

# Print a step; run it unless --dry-run.
step() {
    say "+ $*"
    [ "$DRY_RUN" -eq 1 ] || "$@"
}

# A step that acts on the running system: skipped when staging below --root.
live_step() {
    if [ "$LIVE" -eq 0 ]; then
        say "- skipped (--root $ROOT): $*"
    else
        step "$@"
    fi
}

if [ "$LIVE" -eq 1 ] && [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (sudo), or use --dry-run / --root DIR" >&2
    exit 2
fi
if [ "$CONSTRAINTS" != none ] && [ ! -f "$CONSTRAINTS" ]; then
    echo "install.sh: constraints file $CONSTRAINTS is missing (or use --constraints none)" >&2
    exit 2
fi
for f in "$HERE/systemd/$UNIT_NAME" "$REPO/config.example.yaml"; do
    if [ ! -f "$f" ]; then
        echo "install.sh: $f is missing: run this script from a sonitor checkout" >&2
        exit 2
    fi
done

say "sonitor install: prefix $PREFIX, root ${ROOT:-/}$([ "$DRY_RUN" -eq 1 ] && echo ', dry run')"

# 1. The service user: no login, no home of its own; `audio` opens /dev/snd/*.
if [ "$LIVE" -eq 1 ] && id "$SERVICE_USER" >/dev/null 2>&1; then
    say "= user $SERVICE_USER exists"
    if ! id -nG "$SERVICE_USER" | tr ' ' '\n' | grep -qx audio; then
        step usermod -a -G audio "$SERVICE_USER"
    fi
else
    live_step useradd --system --user-group --groups audio --home-dir /var/lib/sonitor \
        --no-create-home --shell /usr/sbin/nologin --comment sonitor "$SERVICE_USER"
fi

# 2. Folders. systemd creates and chowns these at start too (StateDirectory=, LogsDirectory=);
# creating them now lets `sudo -u sonitor sonitor enroll` write the package before the first start.
step install -d -m 0755 "$CONF_DIR"
step install -d -m 0750 "$STATE_DIR" "$LOG_DIR"
live_step chown "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR" "$LOG_DIR"

# 3. The virtualenv with the runtime only.
if [ "$SKIP_VENV" -eq 1 ]; then
    say "= virtualenv left alone (--skip-venv)"
else
    if [ -x "$VENV/bin/python" ]; then
        say "= virtualenv $VENV exists (upgrading sonitor in it)"
    else
        step "$PYTHON" -m venv "$VENV"
    fi
    # shellcheck disable=SC2086  # PIP_ARGS is a list of words on purpose
    step "$VENV/bin/python" -m pip install --quiet ${PIP_ARGS:-} --upgrade pip
    if [ "$CONSTRAINTS" = none ]; then
        # shellcheck disable=SC2086
        step "$VENV/bin/python" -m pip install --quiet --upgrade ${PIP_ARGS:-} "$SOURCE"
    else
        # shellcheck disable=SC2086
        step "$VENV/bin/python" -m pip install --quiet --upgrade --constraint "$CONSTRAINTS" \
            ${PIP_ARGS:-} "$SOURCE"
    fi
    if [ "$DRY_RUN" -eq 0 ] && "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        say "warning: torch is installed in $VENV; the daemon does not need it (about 1 GB)"
    fi
    step "$VENV/bin/sonitor" --version
fi

# 4. The config: only when absent, so an upgrade never overwrites the plant's settings.
if [ -e "$CONF_DIR/config.yaml" ]; then
    say "= $CONF_DIR/config.yaml exists (kept; compare with config.example.yaml after upgrades)"
else
    step install -m 0640 "$REPO/config.example.yaml" "$CONF_DIR/config.yaml"
    live_step chown "root:$SERVICE_USER" "$CONF_DIR/config.yaml"
fi
step install -m 0644 "$REPO/config.example.yaml" "$CONF_DIR/config.example.yaml"

# 5. Documentation the unit points at, and the unit itself (ExecStart follows --prefix).
DOC_DIR=$VENV/share/doc/sonitor
step install -d -m 0755 "$DOC_DIR"
for doc in "$REPO"/docs/*.md; do
    if [ -e "$doc" ]; then
        step install -m 0644 "$doc" "$DOC_DIR/"
    fi
done
step install -d -m 0755 "$UNIT_DIR"
if [ "$PREFIX" = /opt/sonitor ]; then
    step install -m 0644 "$HERE/systemd/$UNIT_NAME" "$UNIT_DIR/$UNIT_NAME"
else
    say "+ sed 's#/opt/sonitor/#$PREFIX/#g' $HERE/systemd/$UNIT_NAME > $UNIT_DIR/$UNIT_NAME"
    if [ "$DRY_RUN" -eq 0 ]; then
        sed "s#/opt/sonitor/#$PREFIX/#g" "$HERE/systemd/$UNIT_NAME" >"$UNIT_DIR/$UNIT_NAME"
        chmod 0644 "$UNIT_DIR/$UNIT_NAME"
    fi
fi
live_step systemctl daemon-reload

say "done. Next (docs/deploy.md): edit /etc/sonitor/config.yaml, then"
say "  sudo -u $SERVICE_USER $PREFIX/bin/sonitor check-config /etc/sonitor/config.yaml"
say "  sudo systemctl enable --now $UNIT_NAME && journalctl -u sonitor -f"

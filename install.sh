#!/usr/bin/env bash
# katago-edge installer: from a bare Raspberry Pi, Jetson or Linux box to a serving, reporting agent.
#
#   sudo ./install.sh --yes                      # systemd service, local Mosquitto, default network
#   sudo ./install.sh --broker mqtt.lan:1883 --device-id pi-kitchen --yes
#   ./install.sh --dry-run --root tests/fixtures/raspberry-pi-4b-4gb   # what it would do there
#   sudo ./install.sh --uninstall [--purge]
#
# Everything lives in functions and `main "$@"` is the last line, so a truncated download runs
# nothing. Every change goes through run/write_file, which --dry-run turns into messages. A second
# run changes nothing and says so. Without a running systemd (a container, CI) or with
# --no-systemd, everything goes under --prefix and the agent is started in the background (or in
# the foreground with --foreground). Documented in docs/daemon.md.
set -euo pipefail

PROGRAM="install.sh"

usage() {
	cat <<'EOF'
Usage: install.sh [options]

  --yes                 do not ask before changing the system
  --dry-run             print every action, change nothing
  --uninstall           stop and remove the agent (config and networks kept; see --purge)
  --purge               with --uninstall: also remove config, networks, caches and the user
  --prefix DIR          installation folder (default /opt/katago-edge)
  --no-systemd          no unit: install under --prefix, run the agent in the background
  --foreground          with --no-systemd: run the agent in the foreground (exec)
  --broker HOST:PORT    MQTT broker to use (default: install and use a local Mosquitto)
  --device-id ID        device id in MQTT topics (default: host name)
  --model PATH|URL|NAME network to serve (default: the profile's recommended one)
  --profile NAME        profile instead of the one detected
  --root DIR            detect the hardware from a captured device tree (dry runs, tests)
  --venv DIR            use this existing virtual environment instead of <prefix>/venv
  --bin-dir DIR         link the katago-edge command here, on PATH (default /usr/local/bin;
                        with --no-systemd --prefix DIR: DIR/bin)
  -h, --help            this text
EOF
}

# ---------------------------------------------------------------------------------------------
# output and change tracking
# ---------------------------------------------------------------------------------------------

say() { printf '%s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "$PROGRAM" "$*" >&2; }
die() {
	printf '%s: error: %s\n' "$PROGRAM" "$*" >&2
	exit 1
}

changed() {
	CHANGES+=("$1")
	if [[ $DRY_RUN -eq 1 ]]; then say "  would change: $1"; else say "  changed: $1"; fi
}

# run CMD...: execute, or print it under --dry-run.
run() {
	if [[ $DRY_RUN -eq 1 ]]; then
		say "  would run: $*"
		return 0
	fi
	say "  + $*"
	"$@"
}

# write_file PATH MODE: write stdin to PATH if its content differs. Returns 0 when written.
write_file() {
	local path=$1 mode=$2 tmp
	tmp=$(mktemp)
	cat >"$tmp"
	if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
		rm -f "$tmp"
		return 1
	fi
	if [[ $DRY_RUN -eq 1 ]]; then
		say "  would write: $path"
		rm -f "$tmp"
		return 0
	fi
	mkdir -p "$(dirname "$path")"
	install -m "$mode" "$tmp" "$path"
	rm -f "$tmp"
	return 0
}

need_root() {
	[[ $DRY_RUN -eq 1 ]] && return 0
	[[ $(id -u) -eq 0 ]] || die "$1 needs root: run with sudo"
}

# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------

parse_args() {
	YES=0 DRY_RUN=0 UNINSTALL=0 PURGE=0 NO_SYSTEMD=0 FOREGROUND=0
	PREFIX="/opt/katago-edge" BROKER="" DEVICE_ID="" MODEL="" PROFILE="" ROOT="/" VENV="" BIN_DIR=""
	PREFIX_GIVEN=0
	while [[ $# -gt 0 ]]; do
		case $1 in
		--yes | -y) YES=1 ;;
		--dry-run) DRY_RUN=1 ;;
		--uninstall) UNINSTALL=1 ;;
		--purge) PURGE=1 ;;
		--no-systemd) NO_SYSTEMD=1 ;;
		--foreground) FOREGROUND=1 ;;
		--prefix | --broker | --device-id | --model | --profile | --root | --venv | --bin-dir)
			[[ $# -ge 2 && $2 != --* ]] || die "$1 needs a value"
			case $1 in
			--prefix) PREFIX=$2 PREFIX_GIVEN=1 ;;
			--broker) BROKER=$2 ;;
			--device-id) DEVICE_ID=$2 ;;
			--model) MODEL=$2 ;;
			--profile) PROFILE=$2 ;;
			--root) ROOT=$2 ;;
			--venv) VENV=$2 ;;
			--bin-dir) BIN_DIR=$2 ;;
			esac
			shift
			;;
		-h | --help)
			usage
			exit 0
			;;
		*) die "unknown option $1 (see --help)" ;;
		esac
		shift
	done
	[[ $PURGE -eq 0 || $UNINSTALL -eq 1 ]] || die "--purge goes with --uninstall"
	[[ $PREFIX == /* ]] || PREFIX="$(pwd)/$PREFIX"
	[[ -z $VENV || $VENV == /* ]] || VENV="$(pwd)/$VENV"
	[[ -z $BIN_DIR || $BIN_DIR == /* ]] || BIN_DIR="$(pwd)/$BIN_DIR"
	[[ -d $ROOT ]] || die "--root $ROOT is not a folder"
	if [[ -n $BROKER && ! $BROKER =~ ^[A-Za-z0-9._-]+(:[0-9]+)?$ && ! $BROKER =~ ^\[[0-9a-fA-F:]+\](:[0-9]+)?$ ]]; then
		die "--broker expects HOST:PORT, got '$BROKER'"
	fi
	if [[ -n $DEVICE_ID && ! $DEVICE_ID =~ ^[A-Za-z0-9._-]+$ ]]; then
		die "--device-id may use letters, digits, '.', '_' and '-' only"
	fi
	CHANGES=()
}

# ---------------------------------------------------------------------------------------------
# detection
# ---------------------------------------------------------------------------------------------

detect_os() {
	local release="$ROOT/etc/os-release"
	[[ -f $release ]] || release=/etc/os-release
	OS_ID=unknown OS_VERSION="" OS_LIKE=""
	if [[ -f $release ]]; then
		OS_ID=$(sed -n 's/^ID=//p' "$release" | tr -d '"')
		OS_VERSION=$(sed -n 's/^VERSION_CODENAME=//p' "$release" | tr -d '"')
		OS_LIKE=$(sed -n 's/^ID_LIKE=//p' "$release" | tr -d '"')
	fi
	if command -v apt-get >/dev/null 2>&1; then PKG=apt; else PKG=none; fi
}

detect_arch() {
	local cpuinfo="$ROOT/proc/cpuinfo"
	if [[ $ROOT != / && -f $cpuinfo ]]; then
		if grep -qE '^CPU architecture[[:space:]]*:[[:space:]]*8' "$cpuinfo"; then
			ARCH=arm64
		elif grep -qE '^flags[[:space:]]*:.* lm( |$)' "$cpuinfo"; then
			ARCH=amd64
		else
			ARCH=unknown
		fi
		return
	fi
	case $(uname -m) in
	x86_64 | amd64) ARCH=amd64 ;;
	aarch64 | arm64) ARCH=arm64 ;;
	armv7* | armv6*) ARCH=armhf ;;
	*) ARCH=$(uname -m) ;;
	esac
}

# Device class -> pip extras, OS packages and systemd drop-in. Extras cover the runtimes in the
# class's profiles (profiles/*.toml): onnx = onnxruntime (+ onnx for the converter), tflite =
# LiteRT. TensorRT on a Jetson comes from JetPack, seen through --system-site-packages.
detect_device() {
	local model="" compatible=""
	[[ -f $ROOT/proc/device-tree/model ]] && model=$(tr -d '\0' <"$ROOT/proc/device-tree/model")
	[[ -f $ROOT/proc/device-tree/compatible ]] && compatible=$(tr '\0' ' ' <"$ROOT/proc/device-tree/compatible")
	SYSTEM_SITE=0 DROPIN="" NOTES=()
	if [[ -f $ROOT/etc/nv_tegra_release || $compatible == *nvidia,tegra* ]]; then
		DEVICE=jetson EXTRAS=onnx SYSTEM_SITE=1 DROPIN=jetson
		DEVICE_MODEL=${model:-NVIDIA Jetson}
		local l4t=""
		[[ -f $ROOT/etc/nv_tegra_release ]] && l4t=$(sed -n 's/^# \(R[0-9]*\) (release), REVISION: \([0-9.]*\).*/\1.\2/p' "$ROOT/etc/nv_tegra_release")
		NOTES+=("L4T ${l4t:-unknown}: TensorRT comes from JetPack (python3-libnvinfer); the venv sees it")
		[[ $compatible == *p3448* || $model == *Nano* && $l4t == R32* ]] &&
			NOTES+=("Jetson Nano profile runs the KataGo binary (engine katago); install KataGo or set --profile")
	elif [[ $model == *"Raspberry Pi"* ]]; then
		DEVICE=raspberry-pi EXTRAS=onnx,tflite DROPIN=raspberry-pi DEVICE_MODEL=$model
	elif [[ -d $ROOT/system/build.prop || -f $ROOT/system/build.prop || -n ${TERMUX_VERSION:-} ]]; then
		DEVICE=android EXTRAS=onnx,tflite DEVICE_MODEL=${model:-Android}
		NOTES+=("Android/Termux has no systemd: use --no-systemd (termux-services can run the agent)")
	elif [[ $ARCH == amd64 ]]; then
		DEVICE=x86_64 EXTRAS=onnx,tflite DEVICE_MODEL="x86-64 $(sed -n 's/^model name[[:space:]]*: //p' "$ROOT/proc/cpuinfo" 2>/dev/null | head -1)"
		if [[ -f $ROOT/proc/driver/nvidia/version ]] || { [[ $ROOT == / ]] && command -v nvidia-smi >/dev/null 2>&1; }; then
			DEVICE=x86_64-nvidia EXTRAS=onnx DROPIN=nvidia
			NOTES+=("NVIDIA GPU: for CUDA/TensorRT install onnxruntime-gpu and TensorRT (see docs/daemon.md)")
		fi
	else
		DEVICE=$ARCH EXTRAS=onnx,tflite DEVICE_MODEL=${model:-$ARCH board}
	fi
	OS_PACKAGES=(python3-venv python3-pip ca-certificates)
	if [[ -z $BROKER ]]; then OS_PACKAGES+=(mosquitto); fi
}

detect_systemd() {
	if [[ $NO_SYSTEMD -eq 0 && $DRY_RUN -eq 1 && $ROOT != / ]]; then
		return 0 # a dry run for a captured device: show what happens there (Pi OS and JetPack run systemd)
	fi
	if [[ $NO_SYSTEMD -eq 0 && ! -d /run/systemd/system ]]; then
		warn "no running systemd here: installing under $PREFIX and starting the agent in the background"
		NO_SYSTEMD=1
	fi
	[[ $NO_SYSTEMD -eq 0 && $FOREGROUND -eq 1 ]] && die "--foreground goes with --no-systemd"
	return 0
}

# Paths for the two layouts: systemd (FHS, the unit's directories) or everything under --prefix.
set_paths() {
	SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
	[[ -f $SRC/pyproject.toml ]] && grep -q '^name = "katago-edge"' "$SRC/pyproject.toml" || SRC=""
	VENV_GIVEN=0
	if [[ -n $VENV ]]; then VENV_GIVEN=1; else VENV="$PREFIX/venv"; fi
	STAMP_DIR="$PREFIX/.katago-edge-install"
	if [[ $NO_SYSTEMD -eq 1 ]]; then
		# FHS under the prefix, every folder named katago-edge: a shared prefix (/usr/local) is safe
		CONFIG="$PREFIX/etc/katago-edge/agent.toml"
		STATE_DIR="$PREFIX/var/lib/katago-edge"
		CACHE_DIR="$PREFIX/var/cache/katago-edge"
		RUN_DIR="$PREFIX/run/katago-edge"
		LOG_FILE="$PREFIX/var/log/katago-edge/agent.log"
	else
		CONFIG="/etc/katago-edge/agent.toml"
		STATE_DIR="/var/lib/katago-edge"
		CACHE_DIR="/var/cache/katago-edge"
		RUN_DIR="/run/katago-edge"
		LOG_FILE=""
	fi
	WS_TOKEN="$(dirname "$CONFIG")/websocket-token"
	# the command on PATH: FHS /usr/local/bin, or <prefix>/bin for a self-contained prefix install
	if [[ -z $BIN_DIR ]]; then
		if [[ $NO_SYSTEMD -eq 1 && $PREFIX_GIVEN -eq 1 ]]; then BIN_DIR="$PREFIX/bin"; else BIN_DIR=/usr/local/bin; fi
	fi
	SOCKET="$RUN_DIR/agent.sock"
	PID_FILE="$RUN_DIR/agent.pid"
	UNIT_FILE="/etc/systemd/system/katago-edge.service"
	DROPIN_DIR="/etc/systemd/system/katago-edge.service.d"
	BROKER_DROPIN="/etc/mosquitto/conf.d/katago-edge.conf"
	# the local broker's logins and ACL (docs/mqtt.md): the agent logs in as its device id,
	# `katago-edge fleet deploy` as fleet-operator; the passwords live beside the config
	MQTT_PASSWORD="$(dirname "$CONFIG")/mqtt-password"
	OPERATOR_PASSWORD="$(dirname "$CONFIG")/operator-password"
	if [[ $NO_SYSTEMD -eq 1 ]]; then
		BROKER_PASSWD="$(dirname "$CONFIG")/mosquitto.passwd" BROKER_ACL="$(dirname "$CONFIG")/mosquitto.acl"
	else
		BROKER_PASSWD="/etc/mosquitto/katago-edge.passwd" BROKER_ACL="/etc/mosquitto/katago-edge.acl"
	fi
	LOCAL_BROKER_PORT=${KATAGO_EDGE_INSTALL_BROKER_PORT:-1883}
	BROKER_CHANGED=0
	SERVICE_USER="katago-edge"
	if [[ -z $DEVICE_ID ]]; then
		DEVICE_ID=$(hostname 2>/dev/null | tr -c 'A-Za-z0-9._\n-' '-' | head -c 64)
		DEVICE_ID=${DEVICE_ID:-katago-edge}
	fi
	BROKER_HOST=127.0.0.1 BROKER_PORT=$LOCAL_BROKER_PORT
	if [[ -n $BROKER ]]; then
		BROKER_PORT=${BROKER##*:}
		BROKER_HOST=${BROKER%:*}
		[[ $BROKER == *:* && $BROKER_PORT =~ ^[0-9]+$ ]] || BROKER_PORT=1883 BROKER_HOST=$BROKER
		BROKER_HOST=${BROKER_HOST#[}
		BROKER_HOST=${BROKER_HOST%]}
	fi
}

print_plan() {
	say "katago-edge installer"
	say "  OS:        ${OS_ID} ${OS_VERSION}${OS_LIKE:+ (like $OS_LIKE)}, packages via ${PKG}, arch ${ARCH}"
	say "  device:    ${DEVICE} (${DEVICE_MODEL})$([[ $ROOT != / ]] && echo " detected under $ROOT")"
	say "  extras:    katago-edge[${EXTRAS}]"
	say "  packages:  ${OS_PACKAGES[*]}"
	say "  venv:      ${VENV}$([[ $SYSTEM_SITE -eq 1 ]] && echo ' (--system-site-packages)')"
	say "  mode:      $([[ $NO_SYSTEMD -eq 1 ]] && echo "no systemd: under $PREFIX, $([[ $FOREGROUND -eq 1 ]] && echo foreground || echo background)" || echo "systemd unit katago-edge.service${DROPIN:+ + drop-in $DROPIN.conf}")"
	say "  command:   ${BIN_DIR}/katago-edge -> ${VENV}/bin/katago-edge"
	say "  config:    ${CONFIG}"
	say "  broker:    ${BROKER_HOST}:${BROKER_PORT}$([[ -z $BROKER ]] && echo ' (local Mosquitto)')"
	say "  device id: ${DEVICE_ID}"
	say "  network:   ${MODEL:-recommended by the profile}"
	local note
	for note in "${NOTES[@]}"; do say "  note:      $note"; done
}

confirm() {
	[[ $YES -eq 1 || $DRY_RUN -eq 1 ]] && return 0
	if [[ -t 0 ]]; then
		local answer
		read -r -p "Proceed? [y/N] " answer
		[[ $answer == [yY]* ]] || die "cancelled"
	else
		die "not a terminal: add --yes to proceed"
	fi
}

# ---------------------------------------------------------------------------------------------
# installation steps
# ---------------------------------------------------------------------------------------------

install_os_packages() {
	local missing=() p
	for p in "${OS_PACKAGES[@]}"; do
		if [[ $PKG == apt ]]; then
			dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
		fi
	done
	if [[ $PKG != apt ]]; then
		command -v python3 >/dev/null 2>&1 || die "python3 missing; install python3 (3.11+) with venv support"
		return 0
	fi
	[[ ${#missing[@]} -eq 0 ]] && return 0
	need_root "installing ${missing[*]}"
	run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ||
		{ run apt-get update -q && run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; }
	changed "OS packages ${missing[*]}"
}

create_user() {
	[[ $NO_SYSTEMD -eq 1 ]] && return 0
	id -u "$SERVICE_USER" >/dev/null 2>&1 && return 0
	need_root "creating the system user"
	run useradd --system --home-dir "$STATE_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
	changed "system user $SERVICE_USER"
}

source_stamp() {
	if venv_has_checkout; then # runs the checkout in place (a dev venv): nothing to reinstall
		echo "in-place:$SRC extras=$EXTRAS"
		return
	fi
	if [[ -z $SRC ]]; then
		echo "pypi:katago-edge[$EXTRAS]"
		return
	fi
	(cd "$SRC" && find agent profiles pyproject.toml -type f \( -name '*.py' -o -name '*.toml' \) -print0 |
		sort -z | xargs -0 sha256sum | sha256sum | cut -c1-32)
	echo "extras=$EXTRAS system_site=$SYSTEM_SITE"
}

create_venv() {
	if [[ $VENV_GIVEN -eq 1 ]]; then
		[[ -x $VENV/bin/python ]] || die "--venv $VENV has no bin/python"
		return 0
	fi
	[[ -x $VENV/bin/python ]] && return 0
	if [[ $DRY_RUN -eq 0 ]] && ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
		die "katago-edge needs Python 3.11+, found $(python3 -V 2>&1); on JetPack 5 / Ubuntu 20.04 install python3.11 and python3.11-venv first"
	fi
	local args=()
	[[ $SYSTEM_SITE -eq 1 ]] && args+=(--system-site-packages)
	run python3 -m venv "${args[@]}" "$VENV"
	changed "virtual environment $VENV"
}

venv_has_checkout() {
	# The package is importable from this checkout already (an editable install, e.g. a dev venv).
	[[ -n $SRC && -x $VENV/bin/python ]] || return 1
	local where
	where=$("$VENV/bin/python" -c 'import agent, os; print(os.path.dirname(os.path.dirname(agent.__file__)))' 2>/dev/null) || return 1
	[[ $where == "$SRC" ]]
}

install_package() {
	local stamp_file="$STAMP_DIR/package" stamp
	stamp=$(source_stamp)
	if [[ -f $stamp_file && $(cat "$stamp_file") == "$stamp" && -x $VENV/bin/katago-edge ]]; then
		return 0
	fi
	if venv_has_checkout && [[ -x $VENV/bin/katago-edge ]]; then
		say "  $VENV already runs katago-edge from $SRC; not reinstalling"
	elif [[ -n $SRC ]]; then
		run "$VENV/bin/python" -m pip install --progress-bar on "${SRC}[$EXTRAS]"
	else
		run "$VENV/bin/python" -m pip install --progress-bar on "katago-edge[$EXTRAS]"
	fi
	printf '%s\n' "$stamp" | write_file "$stamp_file" 0644 || true
	changed "katago-edge[$EXTRAS] in $VENV"
}

# Put the command on PATH: a symlink <bin-dir>/katago-edge -> <venv>/bin/katago-edge. A file that
# is not a symlink, or a symlink this installer did not make, is left alone (with a warning). The
# link and its target are recorded (install state, bin-link: two lines) so that --uninstall
# removes only our link, wherever --bin-dir put it, and a new --bin-dir moves it.
link_command() {
	local link="$BIN_DIR/katago-edge" target="$VENV/bin/katago-edge" current old_link old_target
	old_link=$(sed -n 1p "$STAMP_DIR/bin-link" 2>/dev/null || true)
	old_target=$(sed -n 2p "$STAMP_DIR/bin-link" 2>/dev/null || true)
	if [[ -L $link ]]; then
		current=$(readlink "$link")
		[[ $current == "$target" ]] && return 0
		if [[ -e $link && $current != "$old_target" ]]; then
			warn "$link points to $current, not made by install.sh: left alone; the command is $target"
			return 0
		fi
	elif [[ -e $link ]]; then
		warn "$link exists and is not a symlink: left alone; the command is $target"
		return 0
	fi
	if [[ ! -d $BIN_DIR ]]; then run mkdir -p "$BIN_DIR"; fi
	if [[ $DRY_RUN -eq 0 && ! -w $BIN_DIR ]]; then
		warn "cannot write $BIN_DIR (run with sudo, or --bin-dir DIR): the command is $target"
		return 0
	fi
	run ln -sfn "$target" "$link"
	if [[ -n $old_link && $old_link != "$link" && -L $old_link && $(readlink "$old_link") == "$old_target" ]]; then
		remove_path "$old_link" # an earlier install's link under another --bin-dir
	fi
	printf '%s\n%s\n' "$link" "$target" | write_file "$STAMP_DIR/bin-link" 0644 || true
	changed "command $link -> $target"
}

# Our links: <bin-dir>/katago-edge and the recorded one, if they point at this venv or at the
# recorded target.
unlink_command() {
	local link current old_link old_target links=("$BIN_DIR/katago-edge")
	old_link=$(sed -n 1p "$STAMP_DIR/bin-link" 2>/dev/null || true)
	old_target=$(sed -n 2p "$STAMP_DIR/bin-link" 2>/dev/null || true)
	[[ -n $old_link ]] && links+=("$old_link")
	for link in "${links[@]}"; do
		[[ -L $link ]] || continue
		current=$(readlink "$link")
		if [[ $current == "$VENV/bin/katago-edge" || (-n $old_target && $current == "$old_target") ]]; then
			remove_path "$link"
		fi
	done
	return 0
}

# How to call the command in the messages: plain `katago-edge` when our link is on PATH.
command_name() {
	local link="$BIN_DIR/katago-edge"
	if [[ -L $link && $(readlink "$link") == "$VENV/bin/katago-edge" ]]; then
		if [[ ":$PATH:" == *":$BIN_DIR:"* ]]; then echo katago-edge; else echo "$link"; fi
	else
		echo "$VENV/bin/katago-edge"
	fi
}

render_config() {
	cat <<EOF
# katago-edge agent config, written by install.sh. Edit freely: install.sh never overwrites an
# edited file. Reference: docs/daemon.md. Reload with: systemctl reload katago-edge (SIGHUP).
device_id = "$DEVICE_ID"
EOF
	[[ -n $MODEL ]] && printf 'model = "%s"\n' "$MODEL"
	[[ -n $PROFILE ]] && printf 'profile = "%s"\n' "$PROFILE"
	cat <<EOF
state_dir = "$STATE_DIR"
cache_dir = "$CACHE_DIR"

[socket]
path = "$SOCKET"

[websocket]
enabled = true
host = "127.0.0.1"
port = ${KATAGO_EDGE_INSTALL_WS_PORT:-6470}
token_file = "$WS_TOKEN"

[mqtt]
host = "$BROKER_HOST"
port = $BROKER_PORT
EOF
	if [[ -z $BROKER ]]; then
		printf 'username = "%s"\npassword_file = "%s"\n' "$DEVICE_ID" "$MQTT_PASSWORD"
	fi
}

# The WebSocket's token (clients send it as ?token=...): made once, readable by the service only.
write_ws_token() {
	[[ -s $WS_TOKEN ]] && return 0
	if [[ $DRY_RUN -eq 1 ]]; then
		say "  would write: $WS_TOKEN (WebSocket token)"
		return 0
	fi
	mkdir -p "$(dirname "$WS_TOKEN")"
	(umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$WS_TOKEN")
	if [[ $NO_SYSTEMD -eq 0 ]]; then
		chgrp "$SERVICE_USER" "$WS_TOKEN"
		chmod 0640 "$WS_TOKEN"
	fi
	changed "WebSocket token $WS_TOKEN"
}

# Write the config unless the user edited the one we wrote last time (its hash is kept).
write_config() {
	local hash_file="$STAMP_DIR/config.sha256" rendered
	rendered=$(render_config)
	if [[ -f $CONFIG ]]; then
		local current
		current=$(sha256sum "$CONFIG" | cut -d' ' -f1)
		if [[ ! -f $hash_file || $(cat "$hash_file") != "$current" ]]; then
			say "  keeping edited config $CONFIG"
			return 0
		fi
	fi
	if printf '%s\n' "$rendered" | write_file "$CONFIG" 0640; then
		[[ $NO_SYSTEMD -eq 0 && $DRY_RUN -eq 0 ]] && chgrp "$SERVICE_USER" "$CONFIG"
		if [[ $DRY_RUN -eq 0 ]]; then sha256sum "$CONFIG" | cut -d' ' -f1 | write_file "$hash_file" 0644 || true; fi
		changed "config $CONFIG"
	fi
	return 0
}

make_dirs() {
	local d
	for d in "$STATE_DIR" "$CACHE_DIR" "$RUN_DIR" "$STAMP_DIR"; do
		[[ -d $d ]] && continue
		run mkdir -p "$d"
		if [[ $NO_SYSTEMD -eq 0 && $d != "$STAMP_DIR" ]]; then
			run chown "$SERVICE_USER:$SERVICE_USER" "$d"
		fi
	done
	[[ -n $LOG_FILE && ! -d $(dirname "$LOG_FILE") ]] && run mkdir -p "$(dirname "$LOG_FILE")"
	return 0
}

# Fetch and convert the network, test the engine: once per (package, config) state.
prepare_network() {
	local stamp_file="$STAMP_DIR/prepared" stamp
	stamp="$(cat "$STAMP_DIR/package" 2>/dev/null || true) $(sha256sum "$CONFIG" 2>/dev/null | cut -c1-32 || true)"
	[[ -f $stamp_file && $(cat "$stamp_file") == "$stamp" ]] && return 0
	say "  preparing the network (fetch, convert once, test the engine); this can take minutes"
	local cmd=("$VENV/bin/katago-edge" serve --config "$CONFIG" --prepare-only) prepared=0
	if [[ $NO_SYSTEMD -eq 0 ]]; then
		# as the service user, with its own HOME (pip's cache when fetching the katrain wheel)
		run runuser -u "$SERVICE_USER" -- env HOME="$STATE_DIR" XDG_CACHE_HOME="$CACHE_DIR" "${cmd[@]}" && prepared=1
	else
		run "${cmd[@]}" && prepared=1
	fi
	[[ $prepared -eq 1 ]] || network_failed
	printf '%s\n' "$stamp" | write_file "$stamp_file" 0644 || true
	changed "network prepared"
}

# The agent has printed why; a download failing on an offline machine is the usual case: say how to
# install without one. The store is where the installed agent looks (<state_dir>/models).
network_failed() {
	local store="$STATE_DIR/models"
	if [[ $MODEL == fake* || (-n $MODEL && -f $MODEL) ]]; then
		die "preparing the network failed: see the agent's message above"
	fi
	cat >&2 <<EOF
$PROGRAM: error: preparing the network failed: see the agent's message above
  No internet here? Bring a KataGo network file (.bin.gz) over and copy it into the folder where
  the installed agent looks for networks:
    $store/
  then run install.sh again with --model $store/NAME.bin.gz.
  Where there is internet, \`katago-edge fetch-model katrain\` gets one (KaTrain's b10c384 network;
  it prints where it stored the file), or take a .bin.gz from https://katagotraining.org/networks/.
EOF
	exit 1
}

# A random secret in a file, made once; readable by the service (0640 group katago-edge) or only by
# root (0600: the operator's).
make_secret() {
	local path=$1 mode=$2
	[[ -s $path ]] && return 0
	if [[ $DRY_RUN -eq 1 ]]; then
		say "  would write: $path (password)"
		return 0
	fi
	mkdir -p "$(dirname "$path")"
	(umask 077 && od -An -N18 -tx1 /dev/urandom | tr -d ' \n' >"$path")
	if [[ $NO_SYSTEMD -eq 0 && $mode == 0640 ]]; then chgrp "$SERVICE_USER" "$path"; fi
	chmod "$mode" "$path"
	changed "password $path"
}

# The local broker's ACL: the fleet broker of docs/mqtt.md for one device. Devices (the agent's
# login, its device id) write only their own status, health and deployment events and read only
# their own requests and desired state; only fleet-operator writes desired states and rollout
# records. Anonymous clients (loopback only: katago-edge query and fleet on this machine) send
# requests and read replies, status, health and deployment progress, and can never deploy.
render_broker_acl() {
	cat <<EOF
# written by katago-edge install.sh (removed by --uninstall); docs/mqtt.md: who can do what
# anonymous (127.0.0.1 only): requests, their replies, reading the fleet; never a desired state
topic write katago/+/analysis/request
topic write katago/fleet/analysis/request
topic read katago/+/status
topic read katago/+/health
topic read katago/+/deployment/events
topic read katago/+/deployment/desired
topic read katago/fleet/rollouts/+

# every login: its own device topics and its own reply topic (%c: anonymous clients by client id)
pattern read katago/clients/%c/reply
pattern read katago/clients/%u/reply
pattern write katago/%u/status
pattern write katago/%u/health
pattern read katago/%u/analysis/request
pattern read katago/%u/deployment/desired
pattern write katago/%u/deployment/events

# this device: answer requests, serve the fleet topic, read networks sent over MQTT
user $DEVICE_ID
topic write katago/clients/+/reply
topic read katago/fleet/analysis/request
topic read katago/fleet/models/#

# the operator: katago-edge fleet deploy / rollback / deployments (password in $OPERATOR_PASSWORD)
user fleet-operator
topic readwrite katago/+/deployment/desired
topic readwrite katago/fleet/rollouts/+
topic readwrite katago/fleet/models/#
topic read katago/+/deployment/events
topic read katago/+/status
topic read katago/+/health
topic write katago/+/analysis/request
EOF
}

# Logins (the agent's, the operator's) and the ACL of the local broker, when install.sh runs one.
write_broker_acl() {
	[[ -n $BROKER ]] && return 0
	make_secret "$MQTT_PASSWORD" 0640
	make_secret "$OPERATOR_PASSWORD" 0600
	local have=0
	if [[ -f $BROKER_PASSWD ]] && grep -q "^$DEVICE_ID:" "$BROKER_PASSWD" && grep -q '^fleet-operator:' "$BROKER_PASSWD" &&
		[[ ! $MQTT_PASSWORD -nt $BROKER_PASSWD && ! $OPERATOR_PASSWORD -nt $BROKER_PASSWD ]]; then
		have=1
	fi
	if [[ $have -eq 0 ]]; then
		if [[ $DRY_RUN -eq 1 ]]; then
			say "  would write: $BROKER_PASSWD (logins $DEVICE_ID, fleet-operator)"
		else
			command -v mosquitto_passwd >/dev/null 2>&1 || die "mosquitto_passwd missing (package mosquitto)"
			local tmp
			tmp=$(mktemp)
			# the passwords go through stdin, never on a command line
			printf '%s\n%s\n' "$(cat "$MQTT_PASSWORD")" "$(cat "$MQTT_PASSWORD")" | mosquitto_passwd -c "$tmp" "$DEVICE_ID" >/dev/null
			printf '%s\n%s\n' "$(cat "$OPERATOR_PASSWORD")" "$(cat "$OPERATOR_PASSWORD")" | mosquitto_passwd "$tmp" fleet-operator >/dev/null
			install -m 0640 "$tmp" "$BROKER_PASSWD"
			rm -f "$tmp"
			if getent group mosquitto >/dev/null 2>&1; then chgrp mosquitto "$BROKER_PASSWD"; fi
			changed "broker logins $BROKER_PASSWD ($DEVICE_ID, fleet-operator)"
		fi
		BROKER_CHANGED=1
	fi
	if render_broker_acl | write_file "$BROKER_ACL" 0644; then
		changed "broker ACL $BROKER_ACL (only fleet-operator may deploy)"
		BROKER_CHANGED=1
	fi
	return 0
}

# The local broker's settings: loopback only, the logins and ACL above, no Nagle, a deep queue.
render_broker_conf() {
	printf 'listener %s 127.0.0.1\nallow_anonymous true\npassword_file %s\nacl_file %s\n' \
		"$LOCAL_BROKER_PORT" "$BROKER_PASSWD" "$BROKER_ACL"
	printf 'set_tcp_nodelay true\nmax_queued_messages 10000\n'
}

# Debian's mosquitto service reads /etc/mosquitto/conf.d: turn Nagle's algorithm off there (the
# default config delays every small MQTT reply by ~40 ms) and let the broker hold a burst of
# requests the agent has not taken yet (it takes at most max_concurrent + max_queue at a time,
# MQTT 5 Receive Maximum; Mosquitto's default queue is 1000 per client). Only global options, so
# Mosquitto 2's local-only default listener (127.0.0.1:1883, anonymous) stays as it is. A fleet
# broker (passwords, ACL, client ids bound to user names) is set up as docs/mqtt.md describes.
configure_system_broker() {
	[[ -n $BROKER ]] && return 0
	[[ -d /etc/mosquitto/conf.d || $DRY_RUN -eq 1 ]] || return 0
	if { printf '# written by katago-edge install.sh (removed by --uninstall)\n' && render_broker_conf; } |
		write_file "$BROKER_DROPIN" 0644 || [[ $BROKER_CHANGED -eq 1 ]]; then
		run systemctl enable mosquitto.service || true
		run systemctl restart mosquitto.service || warn "could not restart mosquitto: check 'journalctl -u mosquitto'"
		changed "$BROKER_DROPIN (127.0.0.1:$LOCAL_BROKER_PORT, ACL, set_tcp_nodelay true)"
	elif ! systemctl is-active --quiet mosquitto.service; then
		run systemctl start mosquitto.service || warn "could not start mosquitto: check 'journalctl -u mosquitto'"
	fi
}

render_unit() {
	sed "s#^ExecStart=.*#ExecStart=$VENV/bin/katago-edge serve#" "$SRC/systemd/katago-edge.service"
}

install_unit() {
	[[ -n $SRC ]] || die "the systemd unit comes from a checkout: run install.sh from a clone"
	local unit_changed=0
	if render_unit | write_file "$UNIT_FILE" 0644; then unit_changed=1; fi
	if [[ -n $DROPIN ]] && write_file "$DROPIN_DIR/device.conf" 0644 <"$SRC/systemd/drop-ins/$DROPIN.conf"; then
		unit_changed=1
	fi
	if [[ $unit_changed -eq 1 ]]; then
		run systemctl daemon-reload
		run systemctl enable katago-edge.service
		changed "unit $UNIT_FILE"
	fi
	if [[ ${#CHANGES[@]} -gt 0 ]]; then
		run systemctl restart katago-edge.service # Type=notify: returns once READY=1 was sent
		changed "service (re)started"
	elif ! systemctl is-active --quiet katago-edge.service; then
		run systemctl start katago-edge.service
		changed "service started"
	fi
}

agent_pid() {
	[[ -f $PID_FILE ]] || return 1
	local pid
	pid=$(cat "$PID_FILE")
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start_local_broker() {
	[[ -n $BROKER ]] && return 0
	local conf
	conf="$(dirname "$CONFIG")/mosquitto.conf"
	# loopback only, with the logins and ACL of write_broker_acl (a remote fleet needs --broker);
	# set_tcp_nodelay: without it Nagle's algorithm + delayed ACKs add ~40 ms to every small reply
	if render_broker_conf | write_file "$conf" 0644; then BROKER_CHANGED=1; fi
	if [[ $BROKER_CHANGED -eq 1 && -f $RUN_DIR/mosquitto.pid ]] && kill -0 "$(cat "$RUN_DIR/mosquitto.pid")" 2>/dev/null; then
		stop_pid "$(cat "$RUN_DIR/mosquitto.pid")" # ours, with old settings: restart it
	fi
	if (exec 3<>"/dev/tcp/127.0.0.1/$LOCAL_BROKER_PORT") 2>/dev/null; then return 0; fi # one is listening already
	command -v mosquitto >/dev/null 2>&1 || die "no MQTT broker on 127.0.0.1:$LOCAL_BROKER_PORT and no mosquitto; pass --broker"
	if [[ $DRY_RUN -eq 1 ]]; then
		say "  would run in the background: mosquitto -c $conf"
		return 0
	fi
	# not -d: as root mosquitto drops to its own user before it could write a pid file here
	setsid mosquitto -c "$conf" >>"$(dirname "$LOG_FILE")/mosquitto.log" 2>&1 </dev/null &
	echo "$!" >"$RUN_DIR/mosquitto.pid"
	local i
	for ((i = 0; i < 50; i++)); do
		if (exec 3<>"/dev/tcp/127.0.0.1/$LOCAL_BROKER_PORT") 2>/dev/null; then break; fi
		sleep 0.1
	done
	changed "local Mosquitto on 127.0.0.1:$LOCAL_BROKER_PORT (pid $!)"
}

# SIGTERM, then wait until the process is gone (up to 30 s, then SIGKILL): what follows (a new
# broker on the same port, removing its folders) must not race its exit
stop_pid() {
	local pid=$1 i
	kill -0 "$pid" 2>/dev/null || return 0
	run kill -TERM "$pid" || true
	[[ $DRY_RUN -eq 1 ]] && return 0
	for ((i = 0; i < 300; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

stop_background() {
	local pid
	pid=$(agent_pid) || return 0
	stop_pid "$pid"
	[[ $DRY_RUN -eq 1 ]] || rm -f "$PID_FILE"
}

start_background() {
	start_local_broker
	if [[ ${#CHANGES[@]} -eq 0 ]] && agent_pid >/dev/null; then
		return 0
	fi
	stop_background
	local cmd=("$VENV/bin/katago-edge" serve --config "$CONFIG")
	if [[ $FOREGROUND -eq 1 ]]; then
		print_howto
		say "  running in the foreground: ${cmd[*]}"
		[[ $DRY_RUN -eq 1 ]] && return 0
		exec "${cmd[@]}"
	fi
	if [[ $DRY_RUN -eq 1 ]]; then
		say "  would run in the background: ${cmd[*]} >>$LOG_FILE"
		return 0
	fi
	say "  + ${cmd[*]} >>$LOG_FILE 2>&1 &"
	setsid "${cmd[@]}" >>"$LOG_FILE" 2>&1 </dev/null &
	echo "$!" >"$PID_FILE"
	changed "agent started in the background (pid $!)"
}

# Wait until the agent answers on its socket and, with MQTT, reports online on the broker.
wait_online() {
	[[ $DRY_RUN -eq 1 ]] && return 0
	say "  waiting for the agent to report online"
	local rc=0
	"$VENV/bin/python" - "$SOCKET" "$BROKER_HOST" "$BROKER_PORT" "$DEVICE_ID" "${PID_FILE}" <<'PY' || rc=$?
import json, os, socket, sys, time
sock_path, host, port, device, pid_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
deadline = time.monotonic() + float(os.environ.get("KATAGO_EDGE_INSTALL_WAIT", "900"))
def alive():
    try:
        os.kill(int(open(pid_file).read()), 0)
        return True
    except (OSError, ValueError):
        return not os.path.exists(pid_file)  # systemd mode: no pid file
while True:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(sock_path)
            s.sendall(b'{"id":"install","action":"query_version"}\n')
            if b'"install"' in s.recv(65536):
                break
    except OSError:
        pass
    if time.monotonic() > deadline or not alive():
        print("the agent did not start", file=sys.stderr)
        sys.exit(1)
    time.sleep(0.5)
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
state = {}
def on_message(client, userdata, msg):
    try:
        state.update(json.loads(msg.payload))
    except ValueError:
        pass
client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.on_message = on_message
client.on_connect = lambda c, *a: c.subscribe(f"katago/{device}/status", qos=1)
try:
    client.connect(host, port)
except OSError as exc:
    print(f"serving locally, but the broker {host}:{port} is unreachable: {exc}", file=sys.stderr)
    sys.exit(3)
client.loop_start()
while state.get("state") != "online" and time.monotonic() < deadline:
    time.sleep(0.2)
client.loop_stop()
if state.get("state") != "online":
    print(f"serving locally, but no 'online' status from {device} on {host}:{port}", file=sys.stderr)
    sys.exit(3)
PY
	local where="see: journalctl -u katago-edge"
	[[ -n $LOG_FILE ]] && where="log: $LOG_FILE"
	case $rc in
	0) say "  online: $DEVICE_ID" ;;
	3) warn "the agent serves locally but is not reachable over MQTT yet (it keeps retrying); $where" ;;
	*) die "the agent is not serving; $where" ;;
	esac
}

print_howto() {
	local cli
	cli=$(command_name)
	cat <<EOF

katago-edge is serving as '$DEVICE_ID'. Query it:
  local socket:  echo '{"id":"a","moves":[["B","Q16"]],"rules":"japanese","komi":6.5,"boardXSize":19,"boardYSize":19,"maxVisits":50}' | socat - UNIX-CONNECT:$SOCKET
  MQTT:          $cli query --device $DEVICE_ID --broker $BROKER_HOST:$BROKER_PORT --moves B:Q16 --visits 50
  KaTrain:       remote engine URL ws://127.0.0.1:${KATAGO_EDGE_INSTALL_WS_PORT:-6470}/?token=<the token in $WS_TOKEN>
  status:        $cli status --socket $SOCKET
  fleet:         $cli fleet --broker $BROKER_HOST:$BROKER_PORT
EOF
	if [[ $NO_SYSTEMD -eq 1 ]]; then
		say "  log: $LOG_FILE   stop: $0 --uninstall --no-systemd --prefix $PREFIX"
	else
		say "  status: systemctl status katago-edge   log: journalctl -u katago-edge"
	fi
}

# ---------------------------------------------------------------------------------------------
# uninstall
# ---------------------------------------------------------------------------------------------

remove_path() {
	[[ -e $1 || -L $1 ]] || return 0
	run rm -rf -- "$1"
	changed "removed $1"
}

uninstall() {
	if [[ $NO_SYSTEMD -eq 0 ]]; then
		need_root "uninstalling the service"
		if [[ -f $UNIT_FILE ]]; then
			run systemctl disable --now katago-edge.service || true
		fi
		remove_path "$UNIT_FILE"
		remove_path "$DROPIN_DIR"
		if [[ -f $BROKER_DROPIN ]]; then
			remove_path "$BROKER_DROPIN"
			remove_path "$BROKER_PASSWD"
			remove_path "$BROKER_ACL"
			run systemctl try-restart mosquitto.service || true
		fi
		if [[ $DRY_RUN -eq 0 ]]; then systemctl daemon-reload || true; fi
	else
		stop_background
		if [[ -f $RUN_DIR/mosquitto.pid ]]; then
			stop_pid "$(cat "$RUN_DIR/mosquitto.pid")"
		fi
	fi
	unlink_command
	if [[ $VENV_GIVEN -eq 0 && -x $VENV/bin/katago-edge ]]; then remove_path "$VENV"; fi
	remove_path "$RUN_DIR"
	if [[ $NO_SYSTEMD -eq 1 ]]; then
		# under --prefix: remove our folders, keep an edited config unless --purge
		local edited=0
		if [[ -f $CONFIG && -f $STAMP_DIR/config.sha256 && $(sha256sum "$CONFIG" | cut -d' ' -f1) != "$(cat "$STAMP_DIR/config.sha256")" ]]; then
			edited=1
		fi
		if [[ $edited -eq 1 && $PURGE -eq 0 ]]; then
			say "  keeping edited config $CONFIG (--purge removes it)"
			remove_path "$(dirname "$CONFIG")/mosquitto.conf"
			remove_path "$BROKER_PASSWD"
			remove_path "$BROKER_ACL"
		else
			remove_path "$(dirname "$CONFIG")"
		fi
		remove_path "$STATE_DIR"
		remove_path "$CACHE_DIR"
		remove_path "$(dirname "$LOG_FILE")"
	elif [[ $PURGE -eq 1 ]]; then
		remove_path "/etc/katago-edge"
		remove_path "$STATE_DIR"
		remove_path "$CACHE_DIR"
		if id -u "$SERVICE_USER" >/dev/null 2>&1; then
			run userdel "$SERVICE_USER"
			changed "removed user $SERVICE_USER"
		fi
	else
		say "  kept: /etc/katago-edge, $STATE_DIR (networks), $CACHE_DIR (--purge removes them)"
	fi
	remove_path "$STAMP_DIR"
	if [[ $DRY_RUN -eq 0 ]]; then
		# parents we may have created, only if now empty (never anything else in a shared prefix)
		local d
		for d in "$PREFIX/bin" "$PREFIX/etc" "$PREFIX/var/lib" "$PREFIX/var/cache" "$PREFIX/var/log" "$PREFIX/var" "$PREFIX/run" "$PREFIX"; do
			[[ -d $d ]] && rmdir "$d" 2>/dev/null && say "  removed empty $d"
		done
	fi
	[[ ${#CHANGES[@]} -eq 0 ]] && say "katago-edge is not installed here: nothing to remove"
	return 0
}

# ---------------------------------------------------------------------------------------------

main() {
	parse_args "$@"
	detect_os
	detect_arch
	detect_device
	detect_systemd
	set_paths
	if [[ $UNINSTALL -eq 1 ]]; then
		say "uninstalling katago-edge$([[ $DRY_RUN -eq 1 ]] && echo ' (dry run)')"
		uninstall
		return 0
	fi
	print_plan
	[[ $DRY_RUN -eq 1 ]] && say "dry run: nothing will be changed"
	[[ $ROOT != / && $DRY_RUN -eq 0 ]] && warn "--root only changes detection; installing on this machine"
	confirm
	install_os_packages
	create_user
	make_dirs
	create_venv
	install_package
	link_command
	write_ws_token
	write_broker_acl
	write_config
	prepare_network
	if [[ $NO_SYSTEMD -eq 1 ]]; then
		start_background
	else
		configure_system_broker
		install_unit
	fi
	wait_online
	if [[ $DRY_RUN -eq 1 ]]; then
		say "dry run finished: nothing was changed"
	elif [[ ${#CHANGES[@]} -eq 0 ]]; then
		say "katago-edge is up to date: nothing changed"
	else
		print_howto
	fi
}

main "$@"

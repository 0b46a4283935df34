# Shared by scripts/up and scripts/test: install what a fresh Debian machine is missing.
# Sourced, not run. Every step is idempotent and quiet when there is nothing to do.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
# ensure_packages PKG...: apt-get install the Debian packages that are not installed yet.
ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The database servers the project runs and tests against. The Debian packages start their
# own system services; Stator runs its own instances, so those are stopped (they would hold
# the default ports and waste memory).
ensure_database_servers() {
  ensure_packages postgresql-15 postgresql-client-15 mariadb-server mariadb-backup pgbackrest zstd lz4
  stop_service postgresql
  stop_service mariadb
}

# stop_service NAME: stop a system service a Debian package started, if systemd runs one.
stop_service() {
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$1" 2>/dev/null; then
    as_root systemctl stop "$1" || true
  fi
}

# A Rust toolchain with rustfmt and clippy (Debian's own rustc is too old for edition 2024).
ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    ensure_packages curl ca-certificates build-essential
    say "installing the Rust toolchain (rustup)"
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
  if command -v rustup >/dev/null 2>&1; then
    local have
    have="$(rustup component list --installed 2>/dev/null || true)"
    for c in rustfmt clippy; do
      grep -q "^$c" <<<"$have" || rustup component add "$c" >/dev/null
    done
  fi
  ensure_packages build-essential pkg-config
}

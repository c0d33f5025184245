#!/usr/bin/env bash
# The system packages `make run` and `make test` need, installed with apt-get when missing.
#
#   deploy/system-packages.sh run    redis-server, curl (the README's client), and python3-venv
#                                    if `python3 -m venv` fails
#   deploy/system-packages.sh test   the same, plus nginx, wrk, redis-sentinel, chromium and
#                                    chromium-driver (the browser test skips without them)
#
# With apt-get (Debian, Ubuntu) it installs what is missing, as root or through sudo, and says
# exactly which packages first. Without apt-get, a missing redis-server stops with one line
# (apt, brew or Docker); the test-only tools only get a warning. Environment:
#   SYSTEM_PACKAGES=skip     check nothing, install nothing (you manage the packages)
#   SYSTEM_PACKAGES=dry-run  print the apt-get command lines instead of running them
#   PYTHON                   the interpreter the venv is made with (default python3)
#   VENV                     the venv directory; when it already works, python3-venv is not needed
# Used by the Makefile (run, test) and by .ci/run, so that both install the same packages.
set -euo pipefail

mode=${1:-}
case "$mode" in
  run | test) ;;
  *) echo "usage: $0 run|test" >&2; exit 2 ;;
esac
setting=${SYSTEM_PACKAGES:-install}
case "$setting" in
  skip) exit 0 ;;
  install | dry-run) ;;
  *) echo "SYSTEM_PACKAGES=$setting: expected install, dry-run or skip" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
venv=${VENV:-.venv}

# Debian keeps nginx and friends in /usr/sbin, which a non-root PATH often lacks.
have() { PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v "$1" >/dev/null 2>&1; }

# `python3 -m venv` fails on Debian/Ubuntu without python3-venv (no ensurepip): try it for
# real, in a throwaway directory, unless the project's venv already works (has pip: a venv
# made without ensurepip is left half-made, without it).
venv_works() {
  "$venv/bin/python" -m pip --version >/dev/null 2>&1 && return 0
  local dir status
  dir=$(mktemp -d)
  "$python" -m venv "$dir/venv" >/dev/null 2>&1 && status=0 || status=1
  rm -rf "$dir"
  return "$status"
}

# package:command pairs; a package is missing when its command is.
wanted=(redis-server:redis-server curl:curl)
if [ "$mode" = test ]; then
  wanted+=(nginx:nginx wrk:wrk redis-sentinel:redis-sentinel chromium:chromium
           chromium-driver:chromedriver)
fi
missing=()
for pair in "${wanted[@]}"; do
  have "${pair##*:}" || missing+=("${pair%%:*}")
done
if have "$python" && ! venv_works; then
  missing+=(python3-venv)
fi
((${#missing[@]})) || exit 0

if ! have apt-get; then
  for package in "${missing[@]}"; do
    case "$package" in
      redis-server)
        echo "redis-server not found: install it (apt: sudo apt-get install redis-server;" \
          "Homebrew: brew install redis), or use Docker: docker compose up" >&2
        exit 1 ;;
      python3-venv)
        echo "$python -m venv does not work here: install your system's venv support" >&2
        exit 1 ;;
    esac
  done
  echo "warning: not found: ${missing[*]} (no apt-get here: install them, e.g. brew install" \
    "nginx wrk redis chromium chromedriver); the tests that need them fail or skip" >&2
  exit 0
fi

# Without the package lists (a fresh machine or container) apt knows no candidate yet.
sudo=()
if [ "$(id -u)" != 0 ]; then
  if have sudo; then
    sudo=(sudo)
  elif [ "$setting" = install ]; then
    echo "missing system packages: ${missing[*]}; run as root:" \
      "apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi
update=("${sudo[@]}" apt-get update -q)
install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q
         --no-install-recommends "${missing[@]}")
echo "make $mode: installing system packages: ${missing[*]}"
echo "  ${update[*]}"
echo "  ${install[*]}"
[ "$setting" = dry-run ] && exit 0
"${update[@]}" >/dev/null
# Ubuntu has no chromium .deb (only a snap wrapper): leave out what apt cannot install, and
# say so, rather than failing the whole step for a test that skips without it.
installable=()
for package in "${missing[@]}"; do
  # Read whole: `| grep -q` would close the pipe early, and pipefail count it a failure.
  policy=$(apt-cache policy "$package" 2>/dev/null || true)
  if [[ $policy == *"Candidate: "* && $policy != *"Candidate: (none)"* ]]; then
    installable+=("$package")
  else
    echo "  $package: no installable candidate from apt here; left out" >&2
    [ "$package" = redis-server ] && exit 1
  fi
done
((${#installable[@]})) || exit 0
install=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q
         --no-install-recommends "${installable[@]}")
"${install[@]}"
echo "make $mode: installed ${installable[*]}"

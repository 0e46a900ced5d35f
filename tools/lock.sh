#!/usr/bin/env bash
# The lock files, from setup.cfg's ranges and the torch pin (requirements-torch.txt):
#   requirements.lock       what a server runs (`cappuccino install`), every file hashed
#   requirements-test.lock  the same versions plus the test extras (`make venv`, `.ci/run`)
# `tools/lock.sh`            refresh both: keeps every pin that still fits its range
# `tools/lock.sh --upgrade`  take the newest versions inside the ranges (then run the tests)
# `tools/lock.sh --newest`   report what --upgrade would change; writes nothing
set -euo pipefail
cd "$(dirname "$0")/.."
COMPILER=${COMPILER:-.venv/bin/pip-compile}  # (a PIP_* name would be read by pip)
[ -x "$COMPILER" ] || { .venv/bin/pip install -q 'pip-tools==7.7.0'; }
flags=(-q --generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links
       --all-build-deps)
compile() {  # OUT, then pip-compile's own arguments
  local out=$1; shift
  "$COMPILER" "${flags[@]}" "$@" -o "$out" setup.cfg
}
case "${1:-}" in
  --newest)
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    compile "$tmp/newest.lock" --upgrade --extra test -c requirements-torch.txt 2>"$tmp/log" \
      || { tail -20 "$tmp/log" >&2; exit 1; }
    pins() { grep -E '^[A-Za-z0-9_.-]+==' "$1" | sed 's/ .*//' | sort; }
    if diff <(pins requirements-test.lock) <(pins "$tmp/newest.lock") >"$tmp/diff"; then
      echo "the lock has the newest versions inside setup.cfg's ranges"
    else
      echo "newer versions inside setup.cfg's ranges (< locked, > newest):"
      grep -E '^[<>]' "$tmp/diff"
    fi ;;
  --upgrade|"")
    compile requirements-test.lock ${1:+--upgrade} --extra test -c requirements-torch.txt
    # the server's lock: the test lock's versions, less the test extras
    compile requirements.lock -c requirements-test.lock ;;
  *) echo "usage: tools/lock.sh [--upgrade | --newest]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Checks systemd/candidate-relay.service the way CI does:
#   1. `systemd-analyze verify` prints nothing on stderr (it exits 0 on unknown keys and bad
#      values and only warns, so any output at all counts as a failure);
#   2. `systemd-analyze security --offline=true` rates the unit at most $MAX_EXPOSURE;
#   3. `ExecReload=` is `candidate-relay reload ... --pid $MAINPID`, which returns only once the
#      daemon has applied (exit 0) or refused (exit 1) the new config. systemd 252 ends the
#      reload job when ExecReload= exits, so a bare `kill -HUP` would report success at once.
# scripts/systemd-test checks all of it, and more, under a real systemd.
# Usage: scripts/check-systemd.sh [UNIT_FILE]   (env: MAX_EXPOSURE, default 2.0)
# Exits 0 when all pass, 1 when a check fails, 2 when it cannot run.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
unit=${1:-"$here/systemd/candidate-relay.service"}
max_exposure=${MAX_EXPOSURE:-2.0}
name=$(basename "$unit")

command -v systemd-analyze >/dev/null || { echo "check-systemd: systemd-analyze not found (install the systemd package)" >&2; exit 2; }
[[ -f $unit ]] || { echo "check-systemd: no unit file $unit" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=0

# --- 1. verify -------------------------------------------------------------------------
# verify also checks that every Exec*= program exists. On a build machine the relay is not
# installed, so a throwaway copy of the unit, under the same file name, has each absent
# program replaced by /bin/true. Nothing else changes; the replacements are listed.
copy="$work/$name"
cp "$unit" "$copy"
while IFS= read -r program; do
    if [[ ! -x $program ]]; then
        echo "verify: $program does not exist here; checking a copy with /bin/true in its place"
        sed -i -E "s#^(Exec[A-Za-z]*=[-@:+!]*)$program( |\$)#\1/bin/true\2#" "$copy"
    fi
done < <(sed -n -E 's/^Exec[A-Za-z]*=[-@:+!]*(\/[^ ]+).*/\1/p' "$unit" | sort -u)

echo "verify: systemd-analyze verify $name"
verify_status=0
verify_out=$(cd "$work" && systemd-analyze verify "./$name" 2>&1 >/dev/null) || verify_status=$?
if [[ $verify_status -ne 0 || -n $verify_out ]]; then
    echo "verify: FAILED (exit $verify_status)"
    [[ -n $verify_out ]] && printf '%s\n' "$verify_out" | sed 's/^/  /'
    failed=1
else
    echo "verify: OK (exit 0, nothing on stderr)"
fi

# --- 2. security -----------------------------------------------------------------------
echo "security: systemd-analyze security --offline=true $name (must be <= $max_exposure)"
security_out=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || true
exposure=$(printf '%s\n' "$security_out" | sed -n -E 's/.*Overall exposure level for [^:]+: ([0-9]+(\.[0-9]+)?).*/\1/p' | tail -n1)
if [[ -z $exposure ]]; then
    echo "security: FAILED (no overall exposure level in the output)"
    printf '%s\n' "$security_out" | sed 's/^/  /'
    failed=1
elif awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e > m) }'; then
    echo "security: FAILED (exposure $exposure > $max_exposure); the items that cost exposure:"
    printf '%s\n' "$security_out" | grep -E '^✗' | sed 's/^/  /'
    failed=1
else
    echo "security: OK (exposure $exposure <= $max_exposure)"
fi

# --- 3. reload ---------------------------------------------------------------------------
reloads=$(grep -E '^ExecReload=' "$unit" || true)
if [[ $(grep -c . <<<"$reloads") -eq 1 && $reloads =~ ^ExecReload=[^\ ]*/candidate-relay\ reload\ .*--pid\ \$MAINPID ]]; then
    echo "reload: OK ($reloads)"
else
    echo "reload: FAILED: want one ExecReload=<bindir>/candidate-relay reload ... --pid \$MAINPID (it waits for the daemon's answer); have:"
    printf '%s\n' "${reloads:-(none)}" | sed 's/^/  /'
    failed=1
fi

exit $failed

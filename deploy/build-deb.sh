#!/bin/sh
# Build the Debian package with Debian's tools (dpkg-buildpackage, debhelper) from a
# copy of the checkout's files (tracked and new, not ignored), so the build leaves the
# checkout as it was. VERSION, when given, is put on top of debian/changelog in the copy.
# Usage: deploy/build-deb.sh OUTDIR [VERSION]
set -eu

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUTDIR [VERSION]  (e.g. $0 dist 0.1.0+1)" >&2
    exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir "$work/baomi"
# --ignore-failed-read: a tracked file deleted in the checkout is left out, not an error.
(cd "$root" && git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - -c --ignore-failed-read 2>/dev/null) | tar -x -C "$work/baomi"
if [ $# -eq 2 ]; then
    cl="$work/baomi/debian/changelog"
    {
        printf 'baomi (%s) bookworm; urgency=medium\n\n  * Built as %s.\n\n' "$2" "$2"
        printf ' -- Baomi developers <baomi@localhost>  %s\n\n' "$(date -R)"
        cat "$cl"
    } > "$cl.new"
    mv "$cl.new" "$cl"
fi
(cd "$work/baomi" && dpkg-buildpackage --build=binary --no-sign >"$work/build.log" 2>&1) || {
    tail -40 "$work/build.log" >&2
    echo "dpkg-buildpackage failed (log above); 'make apt' installs the build tools" >&2
    exit 1
}
cp "$work"/baomi_*.deb "$out/"
ls "$out"/baomi_*.deb

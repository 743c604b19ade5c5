#!/usr/bin/env bash
# Runs every docextract test: installs the Debian packages it needs, builds and
# installs the extension, then runs pg_regress and the TAP tests on clusters of
# their own.  PostgreSQL refuses to run as root, so as root the tests run as an
# unprivileged user (DOCEXTRACT_TEST_USER, default docextract_test: not "docextract", whose
# "$user" search_path entry would be the extension's schema) on a copy
# of the tree.  Extra make arguments pass through, e.g. PROVE_TESTS=test/t/003_crash.pl
set -euo pipefail
cd "$(dirname "$0")/.."
. test/lib.sh

install_packages
make -s
# The source layout (doc/layout.md): cheap, before anything is installed.
bash test/check_layout.sh
make -s check-headers
as_root make -s install
# The upgrade test starts from the real 0.1.0 library and schema.
DOCEXTRACT_0_1_0_INSTALL=$(build_release "$RELEASE_0_1_0" /tmp/docextract-release-0.1.0)
export DOCEXTRACT_0_1_0_INSTALL

if [ "$(id -u)" -ne 0 ]; then
    make installcheck "$@"
    check_regress_log .
    exit
fi

user=${DOCEXTRACT_TEST_USER:-docextract_test}
id "$user" >/dev/null 2>&1 || useradd --system --create-home --shell /bin/bash "$user"
work=$(mktemp -d /tmp/docextract-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
tar --exclude=.git -cf - . | tar -C "$work" -xf -
chown -R "$user" "$work"
status=0
out="$work/installcheck.out"
runuser -u "$user" -- make -C "$work" installcheck "$@" 2>&1 | tee "$out" || status=$?
check_regress_log "$work" || status=1
[ "$status" -eq 0 ] || report_failures "$work" "$out"
exit "$status"

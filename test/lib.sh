# Shared by test/run-tests.sh and test/demo.sh: package installation.
PACKAGES="make gcc pkg-config postgresql-15 postgresql-server-dev-15 libcurl4-openssl-dev
libjson-c-dev libpoppler-glib-dev libqpdf-dev libheif-dev libxlsxwriter-dev libipc-run-perl python3 bc curl poppler-utils"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
    local missing=""
    for p in $PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo "installing Debian packages:$missing"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing
    fi
    export PATH="/usr/lib/postgresql/15/bin:$PATH"
}

# A PostgreSQL prefix of its own holding a released docextract (built from
# its git tag commit), for the upgrade test: a copy of the server's binaries
# (PostgreSQL finds its libraries relative to them) with that release
# installed.  Prints the prefix's install path (its bin/ parent).
RELEASE_0_1_0=31bbd5a
build_release() {
    local commit=$1 dest=$2
    local inst="$dest/usr/lib/postgresql/15"
    if [ -f "$dest/.built-$commit" ]; then echo "$inst"; return; fi
    rm -rf "$dest"
    mkdir -p "$dest/usr/lib/postgresql" "$dest/usr/share/postgresql" "$dest/src"
    cp -a /usr/lib/postgresql/15 "$dest/usr/lib/postgresql/"
    cp -a /usr/share/postgresql/15 "$dest/usr/share/postgresql/"
    ln -s /usr/include "$dest/usr/include"
    git archive "$commit" | tar -x -C "$dest/src"
    make -s -C "$dest/src" PG_CONFIG="$inst/bin/pg_config" >&2
    make -s -C "$dest/src" PG_CONFIG="$inst/bin/pg_config" install >&2
    chmod -R a+rX "$dest"
    touch "$dest/.built-$commit"
    echo "$inst"
}

# No error of pg_regress's server may be XX000 (internal_error): its log
# (test/regress.conf puts each error's SQLSTATE in it) is checked after the run.
# After a failed run: the logs of the failed TAP tests only, then, last (CI shows
# the tail), which tests failed and their failed asserts.
report_failures() {
    local work="$1" out="$2" t f
    local failed
    failed=$(sed -n 's/^\(test\/\)\{0,1\}t\/\([0-9][0-9]*_[a-z0-9_]*\)\.pl .*(Wstat.*/\2/p' "$out" | sort -u)
    [ -f "$work/regression.diffs" ] && { echo "=== regression.diffs"; tail -n 80 "$work/regression.diffs"; }
    for t in $failed; do
        for f in "$work"/tmp_check/log/regress_log_"$t" "$work"/tmp_check/log/"$t"_*.log; do
            [ -f "$f" ] && { echo "=== $f"; tail -n 60 "$f"; }
        done
    done
    echo "=== failed:"
    grep -E '^(not ok|(test/)?t/[0-9]+_.*\.pl .*(Wstat|Failed)|  Failed test|# +Failed test|Files=|Result:)' "$out" | tail -n 40
    echo "failed TAP tests: ${failed:-none (see above)}"
}

check_regress_log() {
    local log="$1/tmp_regress/log/postmaster.log"
    [ -f "$log" ] || return 0
    if grep -E '\] XX000 .*(ERROR|FATAL|PANIC):' "$log"; then
        echo "pg_regress: errors logged as XX000 (internal_error) in $log" >&2
        return 1
    fi
}

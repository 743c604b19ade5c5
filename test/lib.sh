# Shared by test/run-tests.sh and test/demo.sh: package installation.
PACKAGES="make gcc pkg-config postgresql-15 postgresql-server-dev-15 libcurl4-openssl-dev
libjson-c-dev libpoppler-glib-dev libxlsxwriter-dev libipc-run-perl python3 bc curl"

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

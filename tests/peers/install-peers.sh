#!/usr/bin/env bash
# The real peers the tests run against, installed where missing (root):
# Debian's Sendmail 8.17, m4, the namespace tools, strace, man, and the real
# Mailman 2.1 built from ../shared/peers (its build script's stamp makes a
# second run a no-op).  Mailman 3 comes from PyPI in the Makefile.
set -euo pipefail
cd "$(dirname "$0")/../.."
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in sendmail-bin sendmail-cf m4 iproute2 util-linux python3-venv make gcc \
           strace man-db; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash "${MM2_BUILD_SCRIPT:-../shared/peers/build-mailman2.sh}" >/dev/null

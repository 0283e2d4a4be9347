#!/usr/bin/env bash
# Install everything the tests need (Debian packages through apt-get when missing,
# Python packages in .venv), then run lint, type checks and the whole test suite.
# With CI=true a missing component fails its tests instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: real components the tests start on loopback ports.
#   redis-server  event bus (Redis implementation)
#   chromium      headless browser tests (driven by Playwright, no download)
#   rsyslog*      syslog-over-TLS collector for the audit forwarder
#   coturn        TURN server for teleconsultation credentials
#   openssl       certificate checks in tests
#   dicom3tools   dciodvfy, validates exported DICOM wound photos
#   dcmtk         dcmdump and the DICOM dictionary Orthanc needs
#   orthanc*      a real PACS (DICOMweb STOW-RS) for the export tests
#   util-linux    setpriv, to drop privileges in a permission test
#   swaks         a real SMTP client (STARTTLS, client certificates) for the mail gateway;
#                 libnet-ssleay-perl gives it TLS
PACKAGES=(redis-server chromium rsyslog rsyslog-openssl coturn openssl dicom3tools dcmtk
          orthanc orthanc-dicomweb util-linux swaks libnet-ssleay-perl)
missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
# coturn's package may start a system service on the standard port; tests never use it.

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'

echo "== ruff check"; .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy --strict"; .venv/bin/mypy
echo "== pytest"
exec .venv/bin/pytest -q -p no:cacheprovider "$@"

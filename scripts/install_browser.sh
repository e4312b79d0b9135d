#!/usr/bin/env bash
# Chromium and its WebDriver for the web page's browser test (tests/serve/test_browser.py), from the system's
# packages. Installs them with apt-get when they are missing and this runs as root on Debian/Ubuntu; otherwise it
# says what to install, and the browser test skips with the same message.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing chromium and chromium-driver (apt-get) for the browser test"
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
           chromium chromium-driver >/dev/null; }; then
    echo "note: apt-get could not install chromium and chromium-driver; the browser test will skip"
  fi
else
  echo "note: /usr/bin/chromium or /usr/bin/chromedriver is missing; the browser test will skip." \
       "Install them (Debian/Ubuntu: sudo apt-get install chromium chromium-driver) to run it."
fi

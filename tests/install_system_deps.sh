#!/usr/bin/env bash
# Debian packages the test suite uses, installed when missing:
#   chromium                      real headless browser for the end-to-end tests (never a downloaded browser)
#   r-base-core, r-cran-survival  R's survival package, the independent reference for survival statistics
#   r-cran-maxstat                R's maxstat, the reference for the optimal cut-point (live re-check)
# Needs root (or sudo). Without them the tests that need them skip with a reason.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v Rscript >/dev/null 2>&1 || need+=(r-base-core)
if command -v Rscript >/dev/null 2>&1 && ! Rscript -e 'library(survival)' >/dev/null 2>&1; then need+=(r-cran-survival); fi
command -v Rscript >/dev/null 2>&1 || need+=(r-cran-survival)
if ! command -v Rscript >/dev/null 2>&1 || ! Rscript -e 'library(maxstat)' >/dev/null 2>&1; then need+=(r-cran-maxstat); fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
  echo "note: cannot install ${need[*]} (not root, no sudo); the tests that need them will skip" >&2; exit 0
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "warning: apt-get update failed" >&2
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null || {
  echo "warning: could not install ${need[*]}; the tests that need them will skip" >&2; exit 0; }

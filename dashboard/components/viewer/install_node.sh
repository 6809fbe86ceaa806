#!/usr/bin/env bash
# Debian's nodejs + npm, installed when missing: `npm ci` puts the slide viewer's pinned browser library
# (OpenSeadragon, dashboard/components/viewer/frontend/package-lock.json) into its frontend/node_modules.
# Needs root (or sudo); without them it says so (the Slide heatmap page then says the viewer is not installed).
set -euo pipefail
command -v npm >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -eq 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
  echo "note: npm is missing and cannot be installed (not root, no sudo): install nodejs and npm for the slide viewer" >&2; exit 0
fi
echo "installing Debian packages: nodejs npm"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq || echo "warning: apt-get update failed" >&2
$SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null || echo "warning: could not install nodejs and npm" >&2

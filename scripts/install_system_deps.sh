#!/usr/bin/env bash
# Debian packages the project needs: ffmpeg/ffprobe (media), chromium (browser tests),
# opencv-doc (its vtest.avi is real camera footage used by the tests), postgresql (the tests start a
# throwaway server of their own: vr_assets/execution/pg_server.py). Idempotent.
set -euo pipefail
want=()
command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null || want+=(ffmpeg)
if [ "${1:-}" = "--test" ]; then
  command -v chromium >/dev/null || want+=(chromium)
  [ -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ] || want+=(opencv-doc)
  command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || want+=(postgresql)
fi
[ ${#want[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${want[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${want[@]}" >/dev/null

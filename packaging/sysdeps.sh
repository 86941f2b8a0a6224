#!/usr/bin/env bash
# System libraries Qt needs for a real window and the Xvfb screenshot test (Debian/Ubuntu, as root); never fatal.
need=""
for p in xvfb x11-utils libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-xinerama0 libxcb-randr0 \
         libxcb-render-util0 libxcb-image0 libxcb-shape0 libegl1 libgl1 libfontconfig1 libdbus-1-3 \
         libvulkan1 mesa-vulkan-drivers libomp5; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
[ -z "$need" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "note: missing system packages:$need (the Xvfb window test will be skipped)"; exit 0
fi
(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null) \
  || echo "warning: could not install:$need (the Xvfb window test will be skipped)"
exit 0

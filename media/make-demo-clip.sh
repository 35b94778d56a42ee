#!/usr/bin/env bash
# Regenerates media/demo.mp4, the clip fragnet ships for its demos (fragnet demo, the
# compose demo): 12 s of ffmpeg's test pattern with a timer and a 440 Hz tone, H.264 +
# AAC, 640x360, index at the start (faststart) so a browser can play it while it
# downloads. Needs ffmpeg (Debian package `ffmpeg`).
set -euo pipefail
cd "$(dirname "$0")"
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc2=size=640x360:rate=25:duration=12" \
  -f lavfi -i "sine=frequency=440:sample_rate=44100:duration=12" \
  -vf "drawtext=text='fragnet demo %{pts\\:hms}':x=20:y=20:fontsize=28:fontcolor=white:box=1:boxcolor=black@0.6" \
  -c:v libx264 -preset veryfast -profile:v main -pix_fmt yuv420p -b:v 900k -g 50 \
  -c:a aac -b:a 96k -movflags +faststart -metadata title="fragnet demo clip" \
  demo.mp4 2>/dev/null || \
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc2=size=640x360:rate=25:duration=12" \
  -f lavfi -i "sine=frequency=440:sample_rate=44100:duration=12" \
  -c:v libx264 -preset veryfast -profile:v main -pix_fmt yuv420p -b:v 900k -g 50 \
  -c:a aac -b:a 96k -movflags +faststart -metadata title="fragnet demo clip" \
  demo.mp4
ls -l demo.mp4

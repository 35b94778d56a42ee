#!/usr/bin/env bash
# The original walkthrough in one command: build, split the sample clip, start node B
# holding fragments 5-9, and let node A (holding 0-4) ask B for fragment 5 and then for
# everything else. Leaves its files in ./quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p fragnet
# Where cargo put it: ./target, or $CARGO_TARGET_DIR / build.target-dir when set.
target_dir=$(cargo metadata --format-version 1 --no-deps --locked |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="${target_dir:-$PWD/target}/release/fragnet"
[ -x "$bin" ] || { echo "built, but found no binary at $bin" >&2; exit 1; }
clip="${1:-$PWD/../shared/media/sample-480p.mp4}"
[ -f "$clip" ] || { echo "no video at $clip; pass one: scripts/quickstart.sh VIDEO" >&2; exit 1; }
work="$PWD/quickstart"
rm -rf "$work" && mkdir -p "$work" && cd "$work"

"$bin" split "$clip" --out fragments
"$bin" peer --listen 6002 --peer localhost:6001 --seed fragments --have 5-9 --no-console 2> node-b.log &
b=$!
trap 'kill $b 2>/dev/null || true' EXIT
sleep 1
printf 'have\nfragment_5.bin\nfetch all\nhave\nexit\n' | "$bin" peer --listen 6001 --peer localhost:6002 --seed fragments --have 0-4 2> node-a.log
echo
vid_dir=$(ls -d fragnet-data/node-6001/*/ | head -n 1)
"$bin" join "$vid_dir" --out "copy-of-$(basename "$clip")"
cmp "$clip" "copy-of-$(basename "$clip")" && echo "The copy is byte-identical to $clip."
echo "Logs: $work/node-a.log, $work/node-b.log"

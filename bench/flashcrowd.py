#!/usr/bin/env python3
"""Flash-crowd benchmark: N viewers open a video's stream at the same moment while the
seeder's upload is only a little above the video's bitrate, on rate-limited
network-namespace hosts (../shared/tools/netns-hosts). The manager and broker run on an
unlimited host; the seeder and every viewer node on hosts whose upload is limited.

Each viewer is a real `fragnet peer --http` node that holds nothing; a player beside it
(in the same namespace, on loopback, so the player's own reads do not use the node's
upload) reads /videos/<id>/stream the way a player does: playback starts `--startup`
seconds after the crowd arrives and runs at the bitrate, and the player buffers at most
`--lookahead` seconds ahead of the playhead. Byte o is due at start + startup + o/bitrate;
a viewer stalls if any byte arrives after it is due. Reported per run: each viewer's
worst lateness (negative: every byte was early by at least that much), the start-up
buffer the worst viewer would have needed, the seeder's upload as a multiple of the video,
and the P2P share.

The "video" is random bytes of --duration seconds at --bitrate-kbit (the node does not
care what it streams).

Usage: sudo bench/flashcrowd.py [--bin target/release/fragnet] [--viewers 8]
          [--bitrate-kbit 2000] [--duration 60] [--seeder-x 1.5] [--viewer-x 1.5]
          [--startup 4] [--lookahead 8] [--transport tcp] [--chunk-size 64KiB] [--runs 1]
Needs root and iproute2. Not a test: never run in CI. Results go to BENCHMARKS.md by
hand, with this command.
"""
import argparse, json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import Hosts, NH, metric, scrape  # noqa: E402

HOSTS = Hosts("fc", "10.216.0")
ENV = HOSTS.env
nh, addr = HOSTS.nh, HOSTS.addr


def player(url, start_at, bitrate, startup, lookahead):
    """Runs inside a viewer's namespace: waits for start_at (wall clock), plays url."""
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.monotonic()
    host, rest = url.split("//", 1)[1].split("/", 1)
    h, p = host.rsplit(":", 1)
    s = socket.create_connection((h, int(p)), timeout=60)
    s.sendall(f"GET /{rest} HTTP/1.1\r\nHost: {host}\r\nRange: bytes=0-\r\nConnection: close\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            sys.exit("headers ended early")
        head += b
    status = head.split(b" ", 2)[1]
    if not status.startswith(b"20"):
        sys.exit(f"status {status!r}")
    got, worst, worst_at, first = 0, float("-inf"), 0, None
    while True:
        room_at = got / bitrate + startup - lookahead
        now = time.monotonic() - t0
        if room_at > now:
            time.sleep(room_at - now)
        b = s.recv(65536)
        if not b:
            break
        got += len(b)
        arrived = time.monotonic() - t0
        if first is None:
            first = arrived
        late = arrived - (startup + (got - 1) / bitrate)
        if late > worst:
            worst, worst_at = late, got
    print(json.dumps({"bytes": got, "worst": worst, "worst_at": worst_at, "first_byte": first}))


def run_once(a):
    bitrate = a.bitrate_kbit * 1000 / 8
    size = int(bitrate * a.duration)
    up_seed = a.bitrate_kbit * a.seeder_x
    up_view = a.bitrate_kbit * a.viewer_x
    work = tempfile.mkdtemp(prefix="fragnet-crowd-")
    procs = []
    nh("down", check=False)
    nh("up", str(a.viewers + 2), "none")
    try:
        nh("rate", "2", f"{up_seed:.0f}kbit")
        for i in range(3, a.viewers + 3):
            nh("rate", str(i), f"{up_view:.0f}kbit")
        video = os.path.join(work, "video.bin")
        with open(video, "wb") as f:
            f.write(os.urandom(size))
        out = subprocess.run([a.bin, "split", video, "--out", os.path.join(work, "frags"),
                              "--chunk-size", a.chunk_size], check=True, capture_output=True, text=True).stdout
        vid = [l.split()[-1] for l in out.splitlines() if "video id" in l][0]
        m, b = f"http://{addr(1)}:5001", f"{addr(1)}:5555"

        def start(host, args, log):
            out = open(os.path.join(work, log), "w")
            p = subprocess.Popen([NH, "exec", str(host), *args], env=ENV, stdout=out, stderr=subprocess.STDOUT)
            procs.append(p)
            return p

        start(1, [a.bin, "manager", "--listen", "0.0.0.0:5001", "--data", os.path.join(work, "m")], "manager.log")
        start(1, [a.bin, "broker", "--listen", "0.0.0.0:5555"], "broker.log")
        time.sleep(1)

        def peer(host, name, extra):
            return start(host, [a.bin, "peer", "--listen", f"{a.transport}://0.0.0.0:6000", "--advertise", addr(host),
                                "--http", "0.0.0.0:8000", "--data", os.path.join(work, name),
                                "--manager", m, "--broker", b, "--no-console", "-q", *extra], f"{name}.log")

        peer(2, "seed", ["--seed", os.path.join(work, "frags")])
        for i in range(3, a.viewers + 3):
            peer(i, f"v{i}", [])
        time.sleep(4)  # every node registered and subscribed
        start_at = time.time() + 2
        players = []
        for i in range(3, a.viewers + 3):
            p = subprocess.Popen([NH, "exec", str(i), sys.executable, os.path.abspath(__file__), "--player",
                                  f"http://127.0.0.1:8000/videos/{vid}/stream", str(start_at), str(bitrate),
                                  str(a.startup), str(a.lookahead)], env=ENV, stdout=subprocess.PIPE, text=True)
            players.append(p)
        results = []
        for p in players:
            out, _ = p.communicate(timeout=a.duration * 10 + 120)
            if p.returncode != 0:
                return None
            results.append(json.loads(out.strip().splitlines()[-1]))
        seed_up = metric(scrape(addr(2), 8000), "fragnet_serve_bytes_sent_total")
        got = sum(metric(scrape(addr(i), 8000), "fragnet_download_bytes_total") for i in range(3, a.viewers + 3))
        return {
            "worst": [r["worst"] for r in results],
            "first_byte": [r["first_byte"] for r in results],
            "complete": all(r["bytes"] == size for r in results),
            "seed_up": seed_up / size,
            "p2p": 1 - seed_up / got if got else 0.0,
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        nh("down", check=False)
        if a.keep:
            print(f"  kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--player":
        url, start_at, bitrate, startup, lookahead = sys.argv[2:7]
        player(url, float(start_at), float(bitrate), float(startup), float(lookahead))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "fragnet"))
    ap.add_argument("--viewers", type=int, default=8)
    ap.add_argument("--bitrate-kbit", type=float, default=2000)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--seeder-x", type=float, default=1.5, help="seeder upload as a multiple of the bitrate")
    ap.add_argument("--viewer-x", type=float, default=1.5, help="each viewer's upload as a multiple of the bitrate")
    ap.add_argument("--startup", type=float, default=4)
    ap.add_argument("--lookahead", type=float, default=8)
    ap.add_argument("--transport", default="tcp")
    ap.add_argument("--chunk-size", default="64KiB")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    if not os.path.exists(a.bin):
        sys.exit(f"{a.bin} not found: cargo build --release -p fragnet")
    print(f"{a.viewers} viewers, {a.duration:.0f} s at {a.bitrate_kbit:.0f} kbit/s in {a.chunk_size} chunks over "
          f"{a.transport}; seeder upload {a.seeder_x}x and each viewer's {a.viewer_x}x the bitrate; start-up "
          f"buffer {a.startup} s, look-ahead {a.lookahead} s; bin {a.bin}")
    print("| run | viewers that stalled | worst lateness (s) | start-up buffer the worst viewer needed (s) | "
          "median first byte (s) | seeder upload / video | P2P share | all bytes arrived |")
    print("|---|---|---|---|---|---|---|---|")
    for run in range(a.runs):
        r = run_once(a)
        if r is None:
            print(f"| {run + 1} | a player failed | | | | | | |")
            continue
        worst = max(r["worst"])
        stalled = sum(1 for w in r["worst"] if w > 0)
        fb = sorted(r["first_byte"])[len(r["first_byte"]) // 2]
        print(f"| {run + 1} | {stalled} of {a.viewers} | {worst:+.2f} | {max(0.0, a.startup + worst):.1f} | "
              f"{fb:.2f} | {r['seed_up']:.2f}x | {r['p2p'] * 100:.0f} % | {'yes' if r['complete'] else 'no'} |",
              flush=True)
        print("  worst lateness per viewer: " + ", ".join(f"{w:+.2f}" for w in r["worst"]), file=sys.stderr)


if __name__ == "__main__":
    main()

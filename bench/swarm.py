#!/usr/bin/env python3
"""Swarm benchmark: 1 seeder + N leechers on rate-limited network-namespace hosts
(../shared/tools/netns-hosts), every seeder/leecher host's upload limited to the same
rate, the manager and broker on an unlimited host, leechers started together with
`--want all`. Reports, per run: the time until every leecher holds the whole video; the
Kumar-Ross bound max(F/u, N*F/(u + N*u)) and the client-server time N*F/u computed from
the same parameters; the P2P share (bytes leechers got from other leechers over all
bytes they got); the seeder's total upload as a multiple of the video size.

Upload and download bytes come from each peer's /metrics (fragnet_serve_bytes_sent_total,
fragnet_download_bytes_total), read once every leecher is complete.

Usage: sudo bench/swarm.py [--bin target/release/fragnet] [--n 2,4,8,16] [--size-mb 24]
                           [--rate-mbit 16] [--transport tcp,quic] [--runs 1] [--keep]
                           [--chunk-size 1MiB]
Needs root and iproute2 (network namespaces). Not a test: never run in CI. Results go to
BENCHMARKS.md by hand, with this command.
"""
import argparse, os, re, shutil, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from netns import Hosts, NH, metric, scrape  # noqa: E402

HOSTS = Hosts("fb", "10.215.0")
ENV = HOSTS.env
nh, addr = HOSTS.nh, HOSTS.addr


def run_once(bin_, n, size_mb, rate, transport, keep, chunk="1MiB"):
    work = tempfile.mkdtemp(prefix="fragnet-swarm-")
    procs = []
    nh("down", check=False)
    nh("up", str(n + 2), "none")
    try:
        for i in range(2, n + 3):
            nh("rate", str(i), f"{rate}mbit")
        video = os.path.join(work, "video.bin")
        with open(video, "wb") as f:
            f.write(os.urandom(size_mb * 1_000_000))
        subprocess.run([bin_, "split", video, "--out", os.path.join(work, "frags"), "--chunk-size", chunk],
                       check=True, stdout=subprocess.DEVNULL)
        m, b = f"http://{addr(1)}:5001", f"{addr(1)}:5555"

        def start(host, args, log):
            out = open(os.path.join(work, log), "w")
            p = subprocess.Popen([NH, "exec", str(host), bin_, *args], env=ENV,
                                 stdout=out, stderr=subprocess.STDOUT)
            procs.append(p)
            return p

        start(1, ["manager", "--listen", "0.0.0.0:5001", "--data", os.path.join(work, "m")], "manager.log")
        start(1, ["broker", "--listen", "0.0.0.0:5555"], "broker.log")
        time.sleep(1)

        def peer(host, name, extra):
            return start(host, ["peer", "--listen", f"{transport}://0.0.0.0:6000", "--advertise", addr(host),
                                "--http", "0.0.0.0:8000", "--data", os.path.join(work, name),
                                "--manager", m, "--broker", b, "--no-console", "-q", *extra], f"{name}.log")

        peer(2, "seed", ["--seed", os.path.join(work, "frags")])
        time.sleep(2)
        t0 = time.monotonic()
        for i in range(3, n + 3):
            peer(i, f"l{i}", ["--want", "all"])
        done = {}
        deadline = t0 + 600
        while len(done) < n and time.monotonic() < deadline:
            for i in range(3, n + 3):
                if i in done:
                    continue
                d = os.path.join(work, f"l{i}")
                frags = [f for _, _, fs in os.walk(d) for f in fs if re.fullmatch(r"fragment_\d+\.bin", f)]
                if len(frags) >= 10:
                    done[i] = time.monotonic() - t0
            time.sleep(0.1)
        if len(done) < n:
            return None
        last = max(done.values())
        seed_up = metric(scrape(addr(2), 8000), "fragnet_serve_bytes_sent_total")
        got = sum(metric(scrape(addr(i), 8000), "fragnet_download_bytes_total") for i in range(3, n + 3))
        u = rate / 8.0
        kr = max(size_mb / u, n * size_mb / (u + n * u))
        cs = n * size_mb / u
        return {
            "last": last, "kr": kr, "cs": cs, "ratio": last / kr, "speedup": cs / last,
            "p2p": 1 - seed_up / got if got else 0.0, "seed_up": seed_up / (size_mb * 1e6),
            "times": sorted(done.values()),
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
        if keep:
            print(f"  kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "fragnet"))
    ap.add_argument("--n", default="2,4,8,16")
    ap.add_argument("--size-mb", type=int, default=24)
    ap.add_argument("--rate-mbit", type=int, default=16)
    ap.add_argument("--transport", default="tcp,quic")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--chunk-size", default="1MiB", help="fragnet split --chunk-size")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    if not os.path.exists(a.bin):
        sys.exit(f"{a.bin} not found: cargo build --release -p fragnet")
    print(f"{a.size_mb} MB video in {a.chunk_size} chunks, every host's upload {a.rate_mbit} mbit/s; bin {a.bin}")
    print("| transport | N | last leecher | Kumar-Ross bound | ratio to bound | client-server | speed-up vs client-server | P2P share | seeder upload / video |")
    print("|---|---|---|---|---|---|---|---|---|")
    for tr in a.transport.split(","):
        for n in [int(x) for x in a.n.split(",")]:
            for _ in range(a.runs):
                r = run_once(a.bin, n, a.size_mb, a.rate_mbit, tr, a.keep, a.chunk_size)
                if r is None:
                    print(f"| {tr} | {n} | did not finish in 600 s | | | | | | |")
                    continue
                print(f"| {tr} | {n} | {r['last']:.1f} s | {r['kr']:.1f} s | {r['ratio']:.2f}x | {r['cs']:.0f} s "
                      f"| {r['speedup']:.2f}x | {r['p2p'] * 100:.0f} % | {r['seed_up']:.2f}x |", flush=True)
                print("  leechers done at " + ", ".join(f"{t:.1f}" for t in r["times"]), file=sys.stderr)


if __name__ == "__main__":
    main()

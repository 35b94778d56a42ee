#!/usr/bin/env python3
"""QUIC benchmark: the 1 GiB transfer (10 fragments, 1 MiB chunks) between two fragnet
peers over QUIC and over TCP, next to QUIC's ceiling on this machine (a bare quinn bulk
transfer into memory: same quinn, no fragnet protocol, no disk) and the disk ceiling (dd
write + fsync), all in one run. Each peer is its own process; CPU time and peak RSS come
from getrusage of that process (os.wait4).

Usage: bench/quic.py [--size-mib 1024] [--runs 3] [--workdir DIR] [--fairness]
Needs: dd, a release build of the bench_peer example (built here), and about
4 x the size + 1 GiB free in the work directory (checked before starting).
Not a test: never run in CI. Results go to BENCHMARKS.md by hand, with this command.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(cmd, env=None):
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    for line in p.stdout:
        if line.startswith("LISTENING "):
            return p, line.split()[1]
    sys.exit(f"{cmd} exited without listening")


def cpu_so_far(pid):
    """CPU seconds a running process has used (to leave out a seeder's start-up, which
    verifies its whole store)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reap(p, before=0.0):
    """Waits for a process; returns (exit code, CPU seconds since `before`, peak RSS MiB)
    from its rusage (getrusage of the child, via wait4)."""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_utime + ru.ru_stime - before, ru.ru_maxrss / 1024


def run_client(cmd, env=None):
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    out = p.stdout.read()
    code, cpu, rss = reap(p)
    if code != 0:
        sys.exit(f"{cmd} failed ({code}): {out}")
    return json.loads(out.strip().splitlines()[-1]), cpu, rss


def stop(server, before):
    server.stdin.close()
    code, cpu, rss = reap(server, before)
    if code != 0:
        sys.exit(f"server exited with {code}")
    return cpu, rss


def transfer(peer, scheme, seed_dir, fetch_dir, video, env=None):
    shutil.rmtree(fetch_dir, ignore_errors=True)
    server, addr = start([peer, "serve", scheme, seed_dir, f"{scheme}://127.0.0.1:0"], env)
    before = cpu_so_far(server.pid)
    res, ccpu, crss = run_client([peer, "fetch", scheme, fetch_dir, addr, video], env)
    scpu, srss = stop(server, before)
    shutil.rmtree(fetch_dir, ignore_errors=True)
    return summarize(res, scpu, ccpu, srss, crss)


def bare(peer, size, profile):
    server, addr = start([peer, "bare-server", "127.0.0.1:0", profile])
    before = cpu_so_far(server.pid)
    res, ccpu, crss = run_client([peer, "bare-client", addr, str(size), profile])
    scpu, srss = stop(server, before)
    return summarize(res, scpu, ccpu, srss, crss)


def summarize(res, server_cpu, client_cpu, server_rss, client_rss):
    """MB/s, CPU seconds per GB (both processes, and each), peak RSS of each."""
    gb = res["bytes"] / 1e9
    extra = {k: v for k, v in res.items() if k not in ("bytes", "secs")}
    return dict(mbs=res["bytes"] / res["secs"] / 1e6, cpu_per_gb=(server_cpu + client_cpu) / gb,
                server_cpu_per_gb=server_cpu / gb, client_cpu_per_gb=client_cpu / gb,
                server_rss=server_rss, client_rss=client_rss, **extra)


def dd_write_fsync(path, mib):
    t = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dt = time.monotonic() - t
    os.remove(path)
    return mib * 1048576 / dt / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "target", "bench-quic"))
    ap.add_argument("--fairness", action="store_true", help="also run QUIC with send_fairness on, for comparison")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "fragnet-quic", "--example", "bench_peer"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    peer = os.path.join(target, "release", "examples", "bench_peer")
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    w = a.workdir
    # Input, fragments and the seeder's copy exist at once, then a fetched copy and dd's
    # file: refuse to start rather than fill a shared disk.
    need = 4 * a.size_mib * 1048576 + (1 << 30)
    if shutil.disk_usage(w).free < need:
        sys.exit(f"{w}: needs {need >> 30} GiB free, has {shutil.disk_usage(w).free >> 30} GiB")
    big = os.path.join(w, "big.bin")
    with open(big, "wb") as f:
        for _ in range(a.size_mib):
            f.write(os.urandom(1048576))
    size = a.size_mib * 1048576
    frag, seed = os.path.join(w, "fragments"), os.path.join(w, "seeder")
    video = subprocess.run([peer, "split", big, frag], check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([peer, "seed", seed, frag], check=True)
    shutil.rmtree(frag)
    os.remove(big)
    subprocess.run(f"cat {seed}/store/*/fragment_*.bin > /dev/null", shell=True, check=True)  # in the page cache

    rows = []
    for run in range(a.runs):
        r = dict(run=run + 1, dd=dd_write_fsync(os.path.join(w, "dd.bin"), a.size_mib))
        r["bare_default"] = bare(peer, size, "default")
        r["bare"] = bare(peer, size, "tuned")
        r["tcp"] = transfer(peer, "tcp", seed, os.path.join(w, "fetcher"), video)
        r["quic"] = transfer(peer, "quic", seed, os.path.join(w, "fetcher"), video)
        if a.fairness:
            env = dict(os.environ, BENCH_SEND_FAIRNESS="1")
            r["quic_fair"] = transfer(peer, "quic", seed, os.path.join(w, "fetcher"), video, env)
        r["ceiling"] = min(r["bare"]["mbs"], r["dd"])
        r["quic_ratio"] = r["quic"]["mbs"] / r["ceiling"]
        r["quic_vs_tcp"] = r["quic"]["mbs"] / r["tcp"]["mbs"]
        rows.append(r)
        print(json.dumps(r), flush=True)

    def med(f):
        return statistics.median(f(r) for r in rows)

    print("\n| run | dd write+fsync MB/s | bare quinn, quinn defaults MB/s | bare quinn, fragnet settings MB/s | "
          "fragnet TCP MB/s | fragnet QUIC MB/s | QUIC / min(bare, dd) | QUIC / TCP | CPU s/GB TCP / QUIC / bare | "
          "peak RSS MiB TCP seeder / fetcher | QUIC seeder / fetcher |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda r: (f"{r['dd']:.0f} | {r['bare_default']['mbs']:.0f} | {r['bare']['mbs']:.0f} | {r['tcp']['mbs']:.0f} | "
                     f"{r['quic']['mbs']:.0f} | {r['quic_ratio']:.0%} | {r['quic_vs_tcp']:.0%} | "
                     f"{r['tcp']['cpu_per_gb']:.2f} / {r['quic']['cpu_per_gb']:.2f} / {r['bare']['cpu_per_gb']:.2f} | "
                     f"{r['tcp']['server_rss']:.1f} / {r['tcp']['client_rss']:.1f} | {r['quic']['server_rss']:.1f} / {r['quic']['client_rss']:.1f} |")
    for r in rows:
        print(f"| {r['run']} | " + fmt(r))
    keys = ["dd", "ceiling", "quic_ratio", "quic_vs_tcp"]
    m = {k: med(lambda r, k=k: r[k]) for k in keys}
    for t in ["bare_default", "bare", "tcp", "quic"] + (["quic_fair"] if a.fairness else []):
        m[t] = {k: med(lambda r, t=t, k=k: r[t][k]) for k in rows[0][t]}
    print("| median | " + fmt(m))
    if a.fairness:
        print("\nQUIC with send_fairness on (interleaved streams), same runs: MB/s, CPU s/GB")
        for r in rows:
            print(f"run {r['run']}: {r['quic_fair']['mbs']:.0f} MB/s, {r['quic_fair']['cpu_per_gb']:.2f} s/GB "
                  f"(off: {r['quic']['mbs']:.0f} MB/s, {r['quic']['cpu_per_gb']:.2f} s/GB)")
    shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

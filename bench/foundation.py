#!/usr/bin/env python3
"""Foundation benchmark: split a 1 GiB file and move it between two fragnet peers over
loopback TCP, next to the two ceilings a durable transfer cannot beat, all in one run:
iperf3's single-stream loopback throughput and a sequential 1 GiB write + fsync (dd).

Usage: bench/foundation.py [--size-mib 1024] [--runs 3] [--workdir DIR]
Needs: iperf3, GNU time (/usr/bin/time), a release build (built here).
Not a test: never run in CI. Results go to BENCHMARKS.md by hand, with this command.
"""
import argparse, json, os, re, shutil, signal, socket, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def max_rss_kib(time_v_output):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_v_output)
    return int(m.group(1)) if m else None


def dd_write_fsync(path, mib):
    t = time.monotonic()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dt = time.monotonic() - t
    os.remove(path)
    return mib * 1048576 / dt / 1e6


def iperf3():
    port = free_port()
    srv = subprocess.Popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", "5", "-J"], check=True, capture_output=True, text=True).stdout
    srv.wait(timeout=10)
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 8 / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "target", "bench-foundation"))
    a = ap.parse_args()
    for tool in ["iperf3", "/usr/bin/time", "dd"]:
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: apt-get install iperf3 time coreutils")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "fragnet"], cwd=ROOT, check=True)
    fragnet = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "fragnet")
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    w = a.workdir
    big = os.path.join(w, "big.bin")
    with open(big, "wb") as f:
        for _ in range(a.size_mib):
            f.write(os.urandom(1048576))
    size = a.size_mib * 1048576
    subprocess.run(["cat", big], stdout=subprocess.DEVNULL, check=True)  # input in the page cache

    rows = []
    for run in range(a.runs):
        dd = dd_write_fsync(os.path.join(w, "dd.bin"), a.size_mib)
        ip = iperf3()
        # split, input in the page cache
        frag = os.path.join(w, "fragments")
        shutil.rmtree(frag, ignore_errors=True)
        t = time.monotonic()
        p = subprocess.run(["/usr/bin/time", "-v", fragnet, "-q", "split", big, "--out", frag], capture_output=True, text=True, check=True)
        split_mbs = size / (time.monotonic() - t) / 1e6
        split_rss = max_rss_kib(p.stderr)
        # seeder
        port = free_port()
        seed_dir, fetch_dir = os.path.join(w, "seeder"), os.path.join(w, "fetcher")
        shutil.rmtree(seed_dir, ignore_errors=True); shutil.rmtree(fetch_dir, ignore_errors=True)
        seeder = subprocess.Popen(["/usr/bin/time", "-v", fragnet, "-q", "peer", "--listen", f"127.0.0.1:{port}", "--data", seed_dir,
                                   "--seed", frag, "--no-console"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in seeder.stdout:
            if "Node listening" in line:
                break
        p = subprocess.run(["/usr/bin/time", "-v", fragnet, "-q", "fetch", "--peer", f"127.0.0.1:{port}", "--data", fetch_dir,
                            "--out", os.path.join(w, "copy.bin")], capture_output=True, text=True)
        if p.returncode != 0:
            seeder.kill(); sys.exit(p.stdout + p.stderr)
        m = re.search(r"Fetched \d+ fragment\(s\), .* in ([0-9.]+)s", p.stdout)
        xfer_mbs = size / float(m.group(1)) / 1e6
        fetch_rss = max_rss_kib(p.stderr)
        # GNU time does not forward signals: stop the peer itself, then time reports.
        for child in open(f"/proc/{seeder.pid}/task/{seeder.pid}/children").read().split():
            os.kill(int(child), signal.SIGTERM)
        _, err = seeder.communicate(timeout=30)
        seed_rss = max_rss_kib(err)
        same = subprocess.run(["cmp", big, os.path.join(w, "copy.bin")]).returncode == 0
        os.remove(os.path.join(w, "copy.bin"))
        limit = min(dd, ip)
        rows.append(dict(run=run + 1, dd=dd, iperf3=ip, split=split_mbs, xfer=xfer_mbs, limit=limit,
                         xfer_ratio=xfer_mbs / limit, split_ratio=split_mbs / dd,
                         split_rss=split_rss, seed_rss=seed_rss, fetch_rss=fetch_rss, identical=same))
        print(json.dumps(rows[-1]), flush=True)

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k not in ("run", "identical")}
    print("\n| run | dd write+fsync MB/s | iperf3 MB/s | split MB/s | split/dd | transfer MB/s | transfer/limit | peak RSS split / seeder / fetcher (MiB) | copy identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['dd']:.0f} | {r['iperf3']:.0f} | {r['split']:.0f} | {r['split_ratio']:.0%} | {r['xfer']:.0f} | {r['xfer_ratio']:.0%} | "
              f"{r['split_rss']/1024:.1f} / {r['seed_rss']/1024:.1f} / {r['fetch_rss']/1024:.1f} | {r['identical']} |")
    print(f"| median | {med['dd']:.0f} | {med['iperf3']:.0f} | {med['split']:.0f} | {med['split_ratio']:.0%} | {med['xfer']:.0f} | {med['xfer_ratio']:.0%} | "
          f"{med['split_rss']/1024:.1f} / {med['seed_rss']/1024:.1f} / {med['fetch_rss']/1024:.1f} | |")
    shutil.rmtree(a.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

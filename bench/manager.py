#!/usr/bin/env python3
"""Manager benchmark: wrk against the manager's holder lookup and its fragment listing,
next to nginx serving a 2 KB static JSON file on loopback, all in one run.

Data set: 1,000 registered nodes. A popular video of 10 fragments is held whole by
every node (each fragment has 1,000 holders: a lookup samples 50 of them), and 100
catalog videos of 10 fragments each are held by 10 nodes apiece (node i holds video
i mod 100), so the fragment listing has 1,010 entries and a 1,000-entry page exists.
Every node thus announces 10 fragments of the popular video and 10 of a catalog one.

Runs (each `wrk -t1 -c<conns> -d<secs> --latency`, keep-alive), interleaved over
<rounds> rounds so that other load on the machine hits every server alike; medians:
  nginx      GET /static.json (2,048 bytes), worker_processes 1
  lookup     GET /videos/<popular>/fragments/3/peers       (default limit 50)
  fragments  GET /fragments?limit=1000                       (1,000 entries, sample 5),
             with <conns> connections and with 1 (latency of one client)
The manager runs twice: with 1 tokio worker thread (the like-for-like comparison with
nginx's one worker) and with the default (one per core).

Usage: bench/manager.py [--secs 5] [--rounds 3] [--conns 32] [--workdir DIR]
Needs: wrk, nginx (Debian packages; the system service is not used: nginx runs from a
temporary prefix on a free port). Builds the release `fragnet` binary here and runs `fragnet manager`.
Not a test: never run in CI. Results go to BENCHMARKS.md by hand, with this command.
"""
import argparse, http.client, json, os, re, shutil, socket, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def hexid(seed, n):
    import hashlib
    return hashlib.blake2b(f"{seed}-{n}".encode(), digest_size=32).hexdigest()


def manifest(name, fragments=10, size=1000):
    h = hexid("chunk", name)
    frags = [{"chunks": [h], "hash": h, "index": i, "offset": i * size, "size": size} for i in range(fragments)]
    return {"chunk_size": 1048576, "fragment_count": fragments, "fragments": frags, "hash": h,
            "mime": "video/mp4", "name": name, "size": fragments * size, "version": 1}


def wait_http(port, path, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing answered on 127.0.0.1:{port}{path}")


class Api:
    def __init__(self, port):
        self.c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def call(self, method, path, body=None, ok=(200, 201, 204)):
        self.c.request(method, path, body=json.dumps(body) if body is not None else None,
                       headers={"content-type": "application/json"})
        r = self.c.getresponse()
        data = r.read()
        if r.status not in ok:
            sys.exit(f"{method} {path}: {r.status} {data[:300]!r}")
        return json.loads(data) if data else None


def populate(port, nodes=1000, catalog=100):
    api = Api(port)
    t = time.monotonic()
    popular = api.call("POST", "/videos", manifest("popular.mp4"))["id"]
    videos = [api.call("POST", "/videos", manifest(f"catalog-{v:03}.mp4"))["id"] for v in range(catalog)]
    for n in range(nodes):
        nid = hexid("node", n)
        api.call("PUT", f"/nodes/{nid}", {"name": f"peer-{n:04}", "addrs": [f"tcp://10.0.{n // 250}.{n % 250 + 1}:6001"],
                                          "http": f"http://10.0.{n // 250}.{n % 250 + 1}:8001"})
        api.call("PUT", f"/nodes/{nid}/fragments", {"video": popular, "have": list(range(10))})
        api.call("PUT", f"/nodes/{nid}/fragments", {"video": videos[n % catalog], "have": list(range(10))})
    h = api.call("GET", "/health")
    assert h["nodes"] == nodes and h["fragments_held"] == nodes * 20, h
    return popular, time.monotonic() - t


def wrk(url, secs, conns):
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--latency", url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {}
    for pct in ["50", "90", "99"]:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        lat[pct] = v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    if errors or sock:
        sys.exit(f"wrk saw errors against {url}:\n{out}")
    return {"rps": rps, "p50_ms": lat["50"], "p90_ms": lat["90"], "p99_ms": lat["99"]}


def body_size(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    return len(c.getresponse().read())


def start_nginx(w):
    prefix = os.path.join(w, "nginx")
    www = os.path.join(prefix, "www")
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    os.makedirs(www, exist_ok=True)
    # A JSON document of exactly 2,048 bytes shaped like a small holder list.
    entries = []
    while len(json.dumps({"peers": entries, "pad": ""})) < 1900:
        entries.append({"id": hexid("static", len(entries)), "addr": f"tcp://10.0.0.{len(entries) + 1}:6001"})
    doc = json.dumps({"peers": entries, "pad": ""})
    doc = json.dumps({"peers": entries, "pad": "x" * (2048 - len(doc))})
    assert len(doc) == 2048, len(doc)
    with open(os.path.join(www, "static.json"), "w") as f:
        f.write(doc)
    port = free_port()
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    types {{ application/json json; }}
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ root {www}; }}
    }}
}}
""")
    p = subprocess.Popen(["nginx", "-p", prefix, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(port, "/static.json")
    return p, port


def start_manager(binary, w, workers):
    port = free_port()
    env = dict(os.environ, RUST_LOG="warn")
    if workers:
        env["TOKIO_WORKER_THREADS"] = str(workers)
    data = os.path.join(w, f"manager-{workers or 'default'}")
    shutil.rmtree(data, ignore_errors=True)
    p = subprocess.Popen([binary, "manager", "--listen", f"127.0.0.1:{port}", "--data", data, "--ttl", "3600"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(port, "/health")
    return p, port


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--workdir", default=os.path.join(ROOT, "target", "bench-manager"))
    a = ap.parse_args()
    for tool in ["wrk", "nginx"]:
        if not shutil.which(tool):
            sys.exit(f"missing {tool}: apt-get install wrk nginx")
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "fragnet"], cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "release", "fragnet")
    os.makedirs(a.workdir, exist_ok=True)
    procs = []
    try:
        nginx, nport = start_nginx(a.workdir)
        procs.append(nginx)
        managers = {}
        for workers in [1, None]:
            m, mport = start_manager(binary, a.workdir, workers)
            procs.append(m)
            popular, setup = populate(mport)
            managers[f"manager-{workers or 'default'}w"] = (mport, popular, setup)
        static = f"http://127.0.0.1:{nport}/static.json"
        lookups = {k: f"http://127.0.0.1:{p}/videos/{v}/fragments/3/peers" for k, (p, v, _) in managers.items()}
        pages = {k: f"http://127.0.0.1:{p}/fragments?limit=1000" for k, (p, _, _) in managers.items()}
        for url in [static, *lookups.values(), *pages.values()]:
            wrk(url, 2, a.conns)  # warm-up
        # Interleaved rounds: other work on the machine hits every server alike.
        runs = {"nginx": [], **{f"{k}/lookup": [] for k in managers}, **{f"{k}/fragments": [] for k in managers},
                **{f"{k}/fragments_c1": [] for k in managers}}
        for _ in range(a.rounds):
            runs["nginx"].append(wrk(static, a.secs, a.conns))
            for k in managers:
                runs[f"{k}/lookup"].append(wrk(lookups[k], a.secs, a.conns))
            for k in managers:
                runs[f"{k}/fragments"].append(wrk(pages[k], a.secs, a.conns))
                runs[f"{k}/fragments_c1"].append(wrk(pages[k], a.secs, 1))
        med = lambda xs, key: statistics.median(x[key] for x in xs)
        results = {"rounds": a.rounds, "secs": a.secs, "conns": a.conns, "raw": runs,
                   "nginx_rps": med(runs["nginx"], "rps")}
        for k, (p, v, setup) in managers.items():
            results[k] = {
                "setup_secs": round(setup, 2),
                "lookup_bytes": body_size(p, f"/videos/{v}/fragments/3/peers"),
                "page_bytes": body_size(p, "/fragments?limit=1000"),
                "lookup_rps": med(runs[f"{k}/lookup"], "rps"),
                "lookup_p99_ms": med(runs[f"{k}/lookup"], "p99_ms"),
                "lookup_vs_nginx_per_round": [round(l["rps"] / n["rps"], 3) for l, n in zip(runs[f"{k}/lookup"], runs["nginx"])],
                "fragments_rps": med(runs[f"{k}/fragments"], "rps"),
                "fragments_p99_ms": med(runs[f"{k}/fragments"], "p99_ms"),
                "fragments_c1_p50_ms": med(runs[f"{k}/fragments_c1"], "p50_ms"),
                "fragments_c1_p99_ms": med(runs[f"{k}/fragments_c1"], "p99_ms"),
            }
            results[k]["lookup_vs_nginx"] = round(results[k]["lookup_rps"] / results["nginx_rps"], 3)
        print(json.dumps(results, indent=2))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)


if __name__ == "__main__":
    main()

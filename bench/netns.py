"""Shared by the benchmarks that run fragnet on network-namespace hosts
(../shared/tools/netns-hosts): driving the tool and reading a node's /metrics."""
import os, subprocess, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NH = os.path.join(ROOT, "..", "shared", "tools", "netns-hosts")


class Hosts:
    """One set of namespace hosts: `prefix` names the bridge and hosts, `net` is the /24
    (each benchmark its own, so a stale set from one does not break another)."""

    def __init__(self, prefix, net):
        self.env = dict(os.environ, FNH_PREFIX=prefix, FNH_NET=net)

    def nh(self, *args, check=True, capture=False):
        return subprocess.run([NH, *args], env=self.env, check=check, text=True,
                              capture_output=capture).stdout

    def addr(self, i):
        return self.nh("addr", str(i), capture=True).strip()


def metric(text, name):
    """The sum of every sample of `name` in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(host, port):
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
        return r.read().decode()

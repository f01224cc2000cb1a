"""Where downloads may go, and the memory their bodies hold.

Hostile url lists point at the cloud metadata service, at internal services (directly or by a
redirect from a public site), downgrade https to http, or hide behind a resolver that never
answers; bodies in flight must stay within the process's memory budget.

These tests play the internet on this machine: they add addresses to `lo` (a public site on
93.184.216.34 and 1.2.3.4, the metadata service on 169.254.169.254, a private service on 10.1.2.3)
and bind test servers on them. They must run in a network namespace whose only interface is `lo`
(`unshare --net`, as root), so that nothing can leave the machine: `isolated` checks it first.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import urllib.parse
from contextlib import ExitStack
from pathlib import Path

import pytest
import trustme

from img2dataset_ng import ConfigError, Stage, download, worker
from img2dataset_ng.budget import Budget
from img2dataset_ng.config import FetchConfig
from img2dataset_ng.options import resolve_entries
from img2dataset_ng.sample import Sample, Status
from img2dataset_ng.stages.fetch import Fetch, FetchError
from img2dataset_ng.stages.network import Policy, category
from tests.outputs import read_metadata, stored_images, write_url_list
from tests.server import ImageServer, make_image

ROOT = Path(__file__).resolve().parent.parent
PUBLIC, PUBLIC2, METADATA, LINK_LOCAL, PRIVATE, SHARED = (
    "93.184.216.34",
    "1.2.3.4",
    "169.254.169.254",
    "169.254.10.10",
    "10.1.2.3",
    "100.64.0.7",
)
DOWNLOAD_FAILS = "failed_to_download"


def only_loopback() -> bool:
    """Whether this network namespace has no interface but `lo` (asked of the kernel: /sys/class/net
    shows the namespace sysfs was mounted in, not ours)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


@pytest.fixture(scope="module")
def isolated():
    """Adds the test addresses to `lo`, after checking that this namespace has no other interface."""
    assert only_loopback(), "run inside `unshare --net` (only `lo`): these tests add addresses to it"
    added = [PUBLIC, PUBLIC2, METADATA, LINK_LOCAL, PRIVATE, SHARED]
    for address in added:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    yield
    for address in added:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


@pytest.fixture(scope="module")
def sites(isolated):
    """Test servers: `public` and `public2` (public sites), `metadata` on port 80, `private`."""
    with ExitStack() as stack:
        yield {
            "public": stack.enter_context(ImageServer(host=PUBLIC)),
            "public2": stack.enter_context(ImageServer(host=PUBLIC2)),
            "metadata": stack.enter_context(ImageServer(host=METADATA, port=80)),
            "private": stack.enter_context(ImageServer(host=PRIVATE)),
            "shared": stack.enter_context(ImageServer(host=SHARED)),
        }


def to(server: ImageServer, target: str, code: int = 302) -> str:
    """A url of `server` that redirects to `target`."""
    return server.url(f"/to?url={urllib.parse.quote(target, safe='')}&code={code}")


def outcome(fetch: Fetch, url: str) -> str | None:
    """The reason `fetch` fails `url` with, None when it succeeds (then the body is released)."""
    sample = Sample(0, "k", {"url": url})
    try:
        fetch(sample)
    except FetchError as error:
        return error.message
    sample.free_source()
    return None


@pytest.fixture
def fetch():
    stage = Fetch(FetchConfig(respect_robots_txt=False, timeout=2, thread_count=4))
    yield stage
    stage.close()


# --- the policy on its own -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, expected",
    [
        ("93.184.216.34", "public"),
        ("2606:4700::1111", "public"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("::ffff:169.254.169.254", "cloud metadata"),  # IPv4-mapped
        ("64:ff9b::a9fe:a9fe", "cloud metadata"),  # NAT64
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12::1", "private"),
        ("100.64.0.7", "shared"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("198.18.0.1", "reserved"),  # benchmarking
        ("192.0.2.1", "reserved"),  # documentation
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
    ],
)
def test_addresses_are_classified(address, expected):
    assert category(ipaddress.ip_address(address)) == expected


def test_policy_reasons():
    default, public_only = Policy(), Policy(public_only=True)
    assert default.refusal("public", after_public=True) is None
    assert default.refusal("loopback", after_public=False) is None  # a url of this machine, given directly
    assert default.refusal("private", after_public=False) is None
    assert default.refusal("link-local", after_public=False) == "address not allowed: link-local"
    assert default.refusal("cloud metadata", after_public=False) == "address not allowed: cloud metadata"
    assert default.refusal("loopback", after_public=True) == "redirect to a loopback address refused"
    assert default.refusal("private", after_public=True) == "redirect to a private address refused"
    assert default.refusal("unspecified", after_public=True) == "redirect to an unspecified address refused"
    for name in ("loopback", "private", "shared", "unspecified", "multicast", "reserved"):
        assert public_only.refusal(name, after_public=False) == f"address not allowed: {name}"
    assert public_only.refusal("public", after_public=False) is None


# --- where requests go ---------------------------------------------------------------------------


def test_metadata_and_link_local_are_never_fetched(sites, server, fetch):
    metadata = sites["metadata"]
    metadata_url = f"http://{METADATA}/json"
    cases = {
        metadata_url: "address not allowed: cloud metadata",
        f"http://{LINK_LOCAL}:{metadata.httpd.server_address[1]}/json": "address not allowed: link-local",
        "http://[::ffff:169.254.169.254]/json": "address not allowed: cloud metadata",
        "http://0251.0376.0251.0376/json": "address not allowed: cloud metadata",  # octal, as inet_aton reads it
        "http://2852039166/json": "address not allowed: cloud metadata",  # one decimal number
        "http://[fe80::1]/json": "address not allowed: link-local",
        to(server, metadata_url): "address not allowed: cloud metadata",  # a redirect from this machine
        to(sites["public"], metadata_url): "address not allowed: cloud metadata",
        to(server, metadata_url, 307): "address not allowed: cloud metadata",
    }
    assert {url: outcome(fetch, url) for url in cases} == cases
    assert metadata.hits == {}  # not one request reached it
    assert outcome(fetch, sites["public"].url("/json")) is None  # the same path elsewhere is fine


def test_a_redirect_to_the_metadata_service_stores_nothing(sites, server, tmp_path):
    """End to end, with the bytes stored as they come: the refused row fails, nothing of it is stored."""
    rows = [{"url": to(server, f"http://{METADATA}/json")}, {"url": server.url("/img/20x20.jpg")}]
    url_list = write_url_list(rows, tmp_path / "u.jsonl", "jsonl")
    download(
        str(url_list),
        input_format="jsonl",
        output_folder=str(tmp_path / "out"),
        output_format="webdataset",
        disable_all_reencoding=True,
        thread_count=2,
        timeout=2,
    )
    meta = {r["url"]: (r["status"], r["error_message"]) for r in read_metadata(tmp_path / "out").to_pylist()}
    assert meta == {
        rows[0]["url"]: (DOWNLOAD_FAILS, "address not allowed: cloud metadata"),
        rows[1]["url"]: ("success", None),
    }
    stored = stored_images(tmp_path / "out", "webdataset")
    assert [sample["json"]["url"] for sample in stored.values()] == [rows[1]["url"]]
    assert sites["metadata"].hits == {}


def test_a_public_site_cannot_redirect_inside(sites, server, fetch):
    public, private, shared = sites["public"], sites["private"], sites["shared"]
    cases = {
        to(public, server.url("/img/17x17.jpg")): "redirect to a loopback address refused",
        to(public, private.url("/json")): "redirect to a private address refused",
        to(public, shared.url("/json")): "redirect to a shared address refused",
        to(public, f"http://localhost:{server.httpd.server_address[1]}/json"): "redirect to a loopback address refused",
        to(public, to(sites["public2"], private.url("/json"))): "redirect to a private address refused",
        # allowed: public to public, and inside to inside
        to(public, sites["public2"].url("/img/10x10.jpg")): None,
        to(server, private.url("/img/10x10.jpg")): None,
        server.url("/redirect/2/img/10x10.jpg"): None,
    }
    before = dict(server.hits)
    assert {url: outcome(fetch, url) for url in cases} == cases
    assert private.hits.get("/json", 0) == shared.hits.get("/json", 0) == 0
    assert server.hits.get("/json") == before.get("/json")
    assert server.hits.get("/img/17x17.jpg") == before.get("/img/17x17.jpg")


def test_a_reused_connection_is_checked_again(sites, server):
    """A keep-alive connection to this machine, opened for a url given directly, does not serve a
    redirect from a public site to it."""
    stage = Fetch(FetchConfig(respect_robots_txt=False, timeout=2, thread_count=1))
    try:
        assert outcome(stage, server.url("/img/11x11.jpg")) is None
        connections, before = server.connections, server.hits.get("/img/12x12.jpg", 0)
        assert outcome(stage, to(sites["public"], server.url("/img/12x12.jpg"))) == (
            "redirect to a loopback address refused"
        )
        assert server.hits.get("/img/12x12.jpg", 0) == before
        assert outcome(stage, server.url("/img/12x12.jpg")) is None  # given directly, it is fine
        assert server.connections - connections <= 1
    finally:
        stage.close()


def test_public_addresses_only(sites, server):
    stage = Fetch(FetchConfig(respect_robots_txt=False, timeout=2, thread_count=4, public_addresses_only=True))
    port = server.httpd.server_address[1]
    cases = {
        server.url("/img/10x10.jpg"): "address not allowed: loopback",
        f"http://localhost:{port}/img/10x10.jpg": "address not allowed: loopback",
        f"http://0x7f000001:{port}/img/10x10.jpg": "address not allowed: loopback",
        f"http://[::ffff:127.0.0.1]:{port}/img/10x10.jpg": "address not allowed: loopback",
        f"http://0.0.0.0:{port}/img/10x10.jpg": "address not allowed: unspecified",
        sites["private"].url("/img/10x10.jpg"): "address not allowed: private",
        sites["shared"].url("/img/10x10.jpg"): "address not allowed: shared",
        f"http://198.18.0.1:{port}/img/10x10.jpg": "address not allowed: reserved",
        to(sites["public"], server.url("/img/10x10.jpg")): "address not allowed: loopback",
        sites["public"].url("/img/10x10.jpg"): None,
        to(sites["public"], sites["public2"].url("/img/10x10.jpg")): None,
    }
    try:
        assert {url: outcome(stage, url) for url in cases} == cases
    finally:
        stage.close()


def test_https_to_http_redirects_are_refused_unless_allowed(server):
    ca = trustme.CA()
    with ImageServer(tls=ca.issue_cert("127.0.0.1")) as tls_server:
        downgrade = to(tls_server, server.url("/img/13x13.jpg"))
        upgrade = to(server, tls_server.url("/img/13x13.jpg"))
        for allow, expected in ((False, "https to http redirect refused"), (True, None)):
            stage = Fetch(
                FetchConfig(
                    respect_robots_txt=False, timeout=2, ignore_ssl_certificate=True, allow_https_downgrade=allow
                )
            )
            try:
                assert outcome(stage, downgrade) == expected
                assert outcome(stage, upgrade) is None
                assert outcome(stage, to(tls_server, tls_server.url("/img/13x13.jpg"))) is None
            finally:
                stage.close()


@pytest.mark.parametrize("input_format", ["jsonl", "csv", "parquet"])
def test_urls_are_fetched_as_checked_without_surrounding_whitespace(server, tmp_path, input_format):
    rows = [{"url": f"  {server.url('/img/14x14.jpg')}\t"}, {"url": " \t "}]
    url_list = write_url_list(rows, tmp_path / f"u.{input_format}", input_format)
    download(str(url_list), input_format=input_format, output_folder=str(tmp_path / "out"), thread_count=2, timeout=2)
    got = [(r["status"], r["error_message"]) for r in read_metadata(tmp_path / "out").to_pylist()]
    assert got == [("success", None), (DOWNLOAD_FAILS, "empty url")]


# --- name resolution -----------------------------------------------------------------------------

NAMESPACE = ["unshare", "--mount", "--net", "sh", "-c"]
SETUP = 'ip link set lo up && {addresses} mount --bind {resolv} /etc/resolv.conf && exec "$0" "$@"'


def run_isolated(tmp_path: Path, script: str, addresses: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`script` in a fresh network and mount namespace whose resolver is 127.0.0.1 (which the script serves)."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:5 attempts:2\n")
    (tmp_path / "script.py").write_text(textwrap.dedent(script))
    add = "".join(f"ip addr add {address}/32 dev lo && " for address in addresses)
    command = [*NAMESPACE, SETUP.format(addresses=add, resolv=resolv), sys.executable, str(tmp_path / "script.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return done


def test_a_resolver_that_never_answers_costs_one_deadline(isolated, tmp_path):
    script = """
        import json, socket, sys, time
        from pathlib import Path
        from img2dataset_ng import download
        from img2dataset_ng.config import FetchConfig
        from img2dataset_ng.stages.fetch import Fetch, FetchError
        from tests.outputs import read_metadata, write_url_list

        def main():
            blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            blackhole.bind(("127.0.0.1", 53))  # receives the queries, never answers

            stage = Fetch(FetchConfig(respect_robots_txt=False, timeout=2))
            start = time.monotonic()
            try:
                stage.fetch("http://never-answers.test/a.jpg")
            except FetchError as error:
                reason = error.message
            single = time.monotonic() - start

            rows = [{"url": f"http://host{i}.never-answers.test/{i}.jpg"} for i in range(6)]
            url_list = write_url_list(rows, Path("u.jsonl"), "jsonl")
            start = time.monotonic()
            download(str(url_list), input_format="jsonl", output_folder="out", timeout=2, thread_count=6)
            run = time.monotonic() - start
            errors = read_metadata(Path("out")).column("error_message").to_pylist()
            print(json.dumps({"reason": reason, "single": single, "run": run, "errors": errors}))

        if __name__ == "__main__":  # download() spawns its worker processes, which import this script
            main()
    """
    result = __import__("json").loads(run_isolated(tmp_path, script).stdout.splitlines()[-1])
    print("resolver never answers:", result)
    assert result["reason"] == "name resolution timed out"
    assert 1.9 <= result["single"] < 3.0, result  # the deadline, not glibc's 10 s
    assert result["errors"] == ["name resolution timed out"] * 6
    assert result["run"] < 9, result  # six hosts at once, each within its deadline (process start included)


def test_one_resolution_per_hop_so_rebinding_cannot_switch_the_address(isolated, tmp_path):
    """A name that resolves to a public address first and to 127.0.0.1 afterwards (DNS rebinding, with
    a TTL of 0 and no cache on our side): the connection goes to the address that was checked."""
    script = f"""
        import json, socket, struct, threading
        from img2dataset_ng.config import FetchConfig
        from img2dataset_ng.stages.fetch import Fetch, FetchError
        from img2dataset_ng.stages.network import Resolver
        from tests.server import ImageServer, make_image

        answers = [socket.inet_aton({PUBLIC!r})]  # then 127.0.0.1 for ever
        queries = []

        def serve_dns():
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 53))
            while True:
                query, peer = sock.recvfrom(512)
                end = query.index(b"\\0", 12) + 5
                qtype = struct.unpack(">H", query[end - 4 : end - 2])[0]
                answer = b""
                if qtype == 1:  # A
                    queries.append(1)
                    ip = answers.pop(0) if answers else socket.inet_aton("127.0.0.1")
                    answer = b"\\xc0\\x0c" + struct.pack(">HHIH", 1, 1, 0, 4) + ip
                flags = b"\\x81\\x80"
                counts = struct.pack(">HHHH", 1, 1 if answer else 0, 0, 0)
                sock.sendto(query[:2] + flags + counts + query[12:end] + answer, peer)

        threading.Thread(target=serve_dns, daemon=True).start()
        public = ImageServer(host={PUBLIC!r}).__enter__()
        port = public.httpd.server_address[1]
        inside = ImageServer(host="127.0.0.1", port=port).__enter__()

        def fetch(url, **options):
            stage = Fetch(FetchConfig(respect_robots_txt=False, timeout=2, **options))
            stage.resolver = Resolver(ttl=0)  # every hop asks the DNS server again
            try:
                stage.fetch(url)
                return None
            except FetchError as error:
                return error.message
            finally:
                stage.close()

        url = f"http://rebind.test:{{port}}/img/20x20.jpg"
        first = fetch(url, public_addresses_only=True)  # resolved once: public, and connected there
        first_queries = len(queries)
        second = fetch(url, public_addresses_only=True)  # now 127.0.0.1: refused
        answers.append(socket.inet_aton({PUBLIC!r}))
        # a public hop, then a redirect to the same name, which now resolves inside
        redirect = fetch(f"http://rebind.test:{{port}}/to?url=http://rebind.test:{{port}}/json")
        print(json.dumps({{
            "first": first, "first_queries": first_queries, "second": second, "redirect": redirect,
            "public": public.hits, "inside": inside.hits,
        }}))
    """
    result = __import__("json").loads(run_isolated(tmp_path, script, (PUBLIC,)).stdout.splitlines()[-1])
    assert result["first"] is None and result["first_queries"] == 1
    assert result["second"] == "address not allowed: loopback"
    assert result["redirect"] == "redirect to a loopback address refused"
    assert result["public"] == {"/img/20x20.jpg": 1, "/to": 1}
    assert result["inside"] == {}


def test_resolution_is_cached(isolated, fetch, server):
    """`localhost` is looked up once, then answered from the cache (no per-request resolution)."""
    port = server.httpd.server_address[1]
    assert outcome(fetch, f"http://localhost:{port}/img/15x15.jpg") is None
    start = time.perf_counter()
    for _ in range(1000):
        fetch.resolver.resolve("localhost", port, time.monotonic() + 1)
    per_call = (time.perf_counter() - start) / 1000
    print(f"cached resolution: {per_call * 1e6:.2f} us")
    assert per_call < 50e-6


# --- memory held by bodies -----------------------------------------------------------------------


def fresh_fetch(budget_bytes: int, **options) -> Fetch:
    """A Fetch whose process-wide body budget is `budget_bytes` (a size no other test uses: a budget of
    its own)."""
    config = FetchConfig(
        respect_robots_txt=False, timeout=options.pop("timeout", 2), memory_budget=2 * budget_bytes, **options
    )
    stage = Fetch(config)
    assert stage.budget.capacity == budget_bytes and stage.budget.used == 0
    return stage


def test_bodies_are_counted_until_the_sample_drops_them(server):
    stage = fresh_fetch((8 << 20) + 1, max_download_bytes=1_000_000)
    budget: Budget = stage.budget
    try:
        for path, size in (("/bytes/300000", 300_000), ("/unsized/300000", 300_000), ("/unsized/10", 10)):
            sample = Sample(0, "k", {"url": server.url(path)})
            stage(sample)
            assert len(sample.source) == size and budget.used == size, path
            sample.free_source()
            assert budget.used == 0
        for path, reason in (
            ("/lying-length", "incomplete body"),
            ("/endless", "too large"),
            ("/huge-declared", "too large"),
            ("/stall", "timed out"),
            ("/status/404", "HTTP Error 404: Not Found"),
        ):
            assert outcome(stage, server.url(path)) == reason
            assert budget.used == 0, path  # a failed body gives back what it took
    finally:
        stage.close()


@pytest.mark.parametrize("outcome_of_stages", ["resized", "stored as downloaded", "failed"])
def test_a_body_is_given_back_after_the_stages_and_a_failed_sample_drops_it(server, outcome_of_stages):
    """After the stages the body leaves the budget (a copy stored as downloaded is the reorder buffer's
    to bound); a failed sample stores nothing, so it drops its body at once instead of holding it until
    it is written in row order (256 threads of failed 24 MiB bodies once held 12 GB that way)."""
    stage = fresh_fetch((8 << 20) + 5 + len(outcome_of_stages))
    try:
        sample = Sample(0, "k", {"url": server.url("/bytes/300000")})
        stage(sample)
        assert stage.budget.used == 300_000
        if outcome_of_stages == "resized":
            sample.data = b"a smaller image"
        elif outcome_of_stages == "failed":
            sample.fail(Status.FAILED_TO_RESIZE, "unsupported image format")
        sample.free_source()
        assert stage.budget.used == 0 and sample.source is None
        assert (sample.data is None) == (outcome_of_stages == "failed")
    finally:
        stage.close()


def test_finished_samples_waiting_for_an_earlier_one_stop_new_ones_from_starting(server, monkeypatch):
    """The reorder buffer bounds what waits for a slow first sample: once the others (stored as
    downloaded, 100 KB each) hold more than its 250 KB, no new sample starts, whatever the thread count."""
    monkeypatch.setattr(worker, "REORDER_BUDGET", 250_000)
    started = []

    class SlowFirst(Stage):
        def __call__(self, sample: Sample) -> None:
            started.append(sample.index)
            if sample.index == 0:
                time.sleep(1.0)

    stage = fresh_fetch((8 << 20) + 7)
    try:
        samples = [Sample(i, f"k{i}", {"url": server.url("/bytes/100000")}) for i in range(40)]
        order = iter(worker.in_order(samples, [stage, SlowFirst()], thread_count=16))
        assert next(order).index == 0
        assert max(started) <= 17  # the 16 threads' first samples, then 2 more while under the budget
        assert [sample.index for sample in order] == list(range(1, 40)) and stage.budget.used == 0
    finally:
        stage.close()


def test_a_failed_shard_gives_back_the_budget_of_what_it_never_handed_on(server):
    """Bodies stored as downloaded stay counted until written; a shard that fails before writing them
    must still give their memory back (the process goes on with other shards)."""

    class CrashOnFourth(Stage):
        def __call__(self, sample: Sample) -> None:
            if sample.index == 3:
                time.sleep(0.3)  # the samples after it finish first and wait to be handed on
                raise RuntimeError("the shard fails")

    stage = fresh_fetch((8 << 20) + 6)
    try:
        samples = [Sample(i, f"k{i}", {"url": server.url("/bytes/100000")}) for i in range(8)]
        handed_on = []
        with pytest.raises(RuntimeError, match="the shard fails"):
            for sample in worker.in_order(samples, [stage, CrashOnFourth()], thread_count=8):
                handed_on.append(sample.index)
        assert handed_on == [0, 1, 2] and stage.budget.used == 0
    finally:
        stage.close()


def test_a_body_that_can_never_fit_fails_at_once(server):
    stage = fresh_fetch((1 << 20) + 2, max_download_bytes=5_000_000)
    try:
        for path in ("/bytes/1500000", "/unsized/1500000"):
            start = time.monotonic()
            assert outcome(stage, server.url(path)) == "too large for the memory budget"
            assert time.monotonic() - start < 1 and stage.budget.used == 0
    finally:
        stage.close()


def test_a_body_waits_for_memory_within_its_deadline(server):
    stage = fresh_fetch((1 << 20) + 3, timeout=1.5)
    budget = stage.budget
    try:
        assert budget.acquire(budget.capacity - 1000)  # another thread holds nearly everything
        start = time.monotonic()
        assert outcome(stage, server.url("/bytes/100000")) == "timed out waiting for memory"
        assert 1.4 <= time.monotonic() - start < 2.5
        threading.Timer(0.3, budget.release, (budget.capacity - 1000,)).start()
        start = time.monotonic()
        assert outcome(stage, server.url("/bytes/100000")) is None  # it waited for the memory to be freed
        assert 0.25 <= time.monotonic() - start < 1.4 and budget.used == 0
    finally:
        stage.close()


def test_many_large_bodies_share_a_small_budget(server, tmp_path):
    """24 threads, bodies of about 200 KB, 1 MiB for bodies: downloads wait for each other, none fails."""
    for seed in range(3):  # made once up front (as the server will ask for them), so that serving them is quick
        make_image(1500, 1500, "jpg", False, False, seed)
    rows = [{"url": server.url(f"/img/1500x1500.jpg?seed={i % 3}")} for i in range(24)]
    url_list = write_url_list(rows, tmp_path / "u.csv", "csv")
    download(
        str(url_list),
        input_format="csv",
        output_folder=str(tmp_path / "out"),
        thread_count=24,
        memory_budget=2 << 20,
        disable_all_reencoding=True,  # bodies are what this is about: no decode, whose budget is as small
        timeout=20,
    )
    statuses = read_metadata(tmp_path / "out").column("status").to_pylist()
    assert statuses == ["success"] * 24


@pytest.fixture(scope="module")
def other_process_server():
    """The test server in a process of its own, so that its bytes are not counted with ours."""
    process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "server.py")], stdout=subprocess.PIPE, text=True)
    try:
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait()


def test_a_body_is_not_held_twice(other_process_server):
    """Reading a 20 MB body allocates about its size once, not a list of chunks and then their join
    (twice its size); without a Content-Length, the buffer grows by half and is trimmed."""
    size = 20_000_000
    stage = fresh_fetch((64 << 20) + 4, max_download_bytes=30_000_000, timeout=10)
    try:
        for path, most in ((f"/bytes/{size}", 1.1), (f"/unsized/{size}", 1.6)):
            tracemalloc.start()
            body = stage.fetch(other_process_server + path)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            print(path, "peak / body:", round(peak / size, 2))
            assert len(body) == size and peak < most * size, (path, peak)
            assert stage.budget.used == size
            stage.budget.release(len(body))
            del body
    finally:
        stage.close()


def test_socket_family_of_ipv6_servers(isolated, fetch):
    """An IPv6 literal connects over IPv6 (the resolver keeps the family of each address)."""
    with ImageServer(host="::1") as v6:
        assert v6.base.startswith("http://[::1]:")
        assert outcome(fetch, v6.url("/img/16x16.jpg")) is None
        assert socket.has_ipv6


# --- resolve: hostnames served from chosen addresses ----------------------------------------------


def test_resolve_serves_hostnames_from_chosen_addresses_under_the_policy(sites, server, tmp_path):
    """`resolve` (curl's --resolve) puts several hostnames on the local servers; what it names still
    goes through the policy, and names it does not list are resolved as usual."""
    port, public_port = server.httpd.server_address[1], sites["public"].httpd.server_address[1]
    rows = [
        {"url": f"http://images.example:{port}/img/20x20.jpg"},
        {"url": f"http://IMAGES.Example:{port}/img/30x20.jpg"},  # host names are not case-sensitive
        {"url": f"http://cdn.example:{public_port}/img/40x20.jpg"},
        {"url": "http://meta.example/json"},
        {"url": f"http://unlisted.example:{port}/img/20x20.jpg"},
    ]
    url_list = write_url_list(rows, tmp_path / "u.jsonl", "jsonl")
    download(
        str(url_list),
        input_format="jsonl",
        output_folder=str(tmp_path / "out"),
        output_format="parquet",
        resolve=[
            f"images.example:{port}:127.0.0.1",
            f"cdn.example:{public_port}:{PUBLIC}",
            f"meta.example:80:{METADATA}",
        ],
        timeout=3,
    )
    rows = read_metadata(tmp_path / "out").to_pylist()
    assert [(r["status"], r["error_message"], r["width"]) for r in rows] == [
        ("success", None, 256),
        ("success", None, 256),
        ("success", None, 256),
        (DOWNLOAD_FAILS, "address not allowed: cloud metadata", None),
        (DOWNLOAD_FAILS, "name resolution failed", None),
    ]


@pytest.mark.parametrize(
    "entry", ["images.example", "images.example:80", "images.example:http:127.0.0.1", "h:80:not-an-ip", ":80:1.2.3.4"]
)
def test_a_bad_resolve_entry_fails_before_any_work(tmp_path, entry):
    with pytest.raises(ConfigError, match=r"resolve entries must be HOST:PORT:ADDRESS.*" + re.escape(repr(entry))):
        download(str(tmp_path / "u.txt"), output_folder=str(tmp_path / "out"), resolve=[entry])
    assert not (tmp_path / "out").exists()


def test_resolve_entries_take_ipv6_and_several_addresses():
    assert resolve_entries("resolve", ["A.example:443:[::1],127.0.0.1"]) == (("a.example", 443, ("::1", "127.0.0.1")),)

"""Politeness and opt-outs in real downloads: one local server playing several hostnames (through the
`resolve` option), counting what each host saw."""

from __future__ import annotations

import json
import logging
import time

import pytest

from img2dataset_ng import download
from img2dataset_ng.config import FetchConfig
from img2dataset_ng.sample import URL, Sample
from img2dataset_ng.stages.fetch import TDM_REP_REFUSAL, Fetch
from img2dataset_ng.stages.politeness import GIVE_UP_AFTER
from img2dataset_ng.stages.robots import ROBOTS_REFUSAL
from tests.outputs import read_metadata, read_stats, write_url_list
from tests.server import ImageServer, Throttle, make_image


@pytest.fixture()
def hosts_server():
    with ImageServer() as server:
        yield server


def run(server, tmp_path, urls, hosts, name="out", **options):
    url_list = write_url_list([{"url": u} for u in urls], tmp_path / f"{name}.csv", "csv")
    options = {"thread_count": 16, "image_size": 32, "output_format": "webdataset", **options}
    summary = download(
        str(url_list), input_format="csv", output_folder=str(tmp_path / name), resolve=server.resolve(*hosts), **options
    )
    rows = {row["url"]: row for row in read_metadata(tmp_path / name).to_pylist()}
    return summary, rows


def images(server, host, count, size=24):
    return [server.host_url(host, f"/img/{size}x{size}.jpg?seed={i}") for i in range(count)]


def test_no_host_gets_more_than_the_cap_and_a_throttled_host_ends_in_successes(hosts_server, tmp_path, caplog):
    server = hosts_server
    for host in ("a.test", "b.test"):
        server.configure_host(host, delay=0.15)
    server.configure_host("slow.test", throttle=Throttle(rate=5, retry_after=1), delay=0.05)
    a, b, slow = images(server, "a.test", 30), images(server, "b.test", 30), images(server, "slow.test", 12)
    urls = [u for trio in zip(a, b, slow + [""] * 18) for u in trio if u]
    caplog.set_level(logging.INFO, logger="img2dataset_ng")
    summary, rows = run(
        server, tmp_path, urls, ["a.test", "b.test", "slow.test"], thread_count=32, retries=6, max_host_concurrency=4
    )
    assert [rows[u]["status"] for u in urls] == ["success"] * len(urls)
    assert server.peak("a.test") == server.peak("b.test") == 4  # the cap, reached
    assert server.peak("slow.test") <= 4
    assert server.throttled("slow.test") > 0  # it did push back, and every one of its rows got through
    stats = next(iter(read_stats(tmp_path / "out").values()))
    slow = stats["hosts"]["slow.test"]
    assert slow["throttled"] == server.throttled("slow.test")
    assert slow["requests"] == server.requests("slow.test")  # robots.txt included
    assert slow["backoff_seconds"] >= 1.0  # Retry-After honoured
    assert list(stats["hosts"])[0] == "slow.test"  # the most throttled first
    assert stats["hosts"]["a.test"]["requests"] == 31 and stats["hosts"]["a.test"]["throttled"] == 0
    assert "most throttled host(s)" in caplog.text and "slow.test" in caplog.text
    assert summary.most_throttled()[0][0] == "slow.test"


def test_a_slow_host_does_not_hold_back_the_others(hosts_server, tmp_path):
    server = hosts_server
    server.configure_host("slow.test", delay=0.6)
    slow, fast = images(server, "slow.test", 6), images(server, "fast.test", 60)
    urls = slow + fast  # the slow host's rows first: a FIFO of threads would be stuck behind them
    run(server, tmp_path, urls, ["slow.test", "fast.test"], thread_count=8, max_host_concurrency=2)
    assert server.peak("slow.test") == 2
    slow_stats, fast_stats = server.host_stats("slow.test"), server.host_stats("fast.test")
    assert fast_stats.last_end < slow_stats.last_end - 0.6  # fast finished while slow still had rows


def test_a_process_starts_its_next_shard_while_a_throttled_host_holds_the_last_one(hosts_server, tmp_path):
    server = hosts_server
    server.configure_host("slow.test", throttle=Throttle(rate=2, retry_after=1), delay=0.05)
    slow, a, b = images(server, "slow.test", 10), images(server, "a.test", 20), images(server, "b.test", 30)
    urls = slow + a + b  # shard 0: slow's 10 and a's 20; shard 1: b's 30
    _, rows = run(
        server,
        tmp_path,
        urls,
        ["slow.test", "a.test", "b.test"],
        processes_count=1,
        number_sample_per_shard=30,
        retries=6,
        max_host_concurrency=4,
    )
    assert [rows[u]["status"] for u in urls] == ["success"] * len(urls)
    assert server.throttled("slow.test") > 0 and server.peak("slow.test") <= 4
    slow_seen, b_seen = server.host_stats("slow.test"), server.host_stats("b.test")
    assert slow_seen.last_end - slow_seen.first_start >= 3.0  # 10 urls at 2/s
    assert b_seen.last_end < slow_seen.last_end - 1.0  # shard 1 ran, and ended, beside shard 0's tail
    assert [rows[u]["key"] for u in urls] == [f"{s:05d}{i:02d}" for s in (0, 1) for i in range(30)]


def test_min_host_interval_spaces_request_starts(hosts_server, tmp_path):
    server = hosts_server
    start = time.monotonic()
    run(
        server,
        tmp_path,
        images(server, "paced.test", 6),
        ["paced.test"],
        min_host_interval=0.25,
        respect_robots_txt=False,
    )
    stats = server.host_stats("paced.test")
    assert stats.requests == 6 and stats.peak == 1
    assert stats.last_end - stats.first_start >= 5 * 0.25 - 0.05  # (the server sees the starts with some jitter)
    assert time.monotonic() - start < 30


def test_max_host_rate_is_shared_by_the_workers():
    """Each of `workers` processes keeps 1/workers of the job's rate: one start per workers/rate seconds."""
    config = FetchConfig(max_host_rate=10.0, workers=4, min_host_interval=0.1)
    scheduler = Fetch(config).scheduler([Sample(0, "k", {URL: "http://a.test/x.jpg"})])
    assert scheduler.interval == pytest.approx(0.4)
    scheduler = Fetch(FetchConfig(max_host_rate=100.0, workers=4, min_host_interval=0.1)).scheduler([])
    assert scheduler.interval == pytest.approx(0.1)  # the larger of the two


def test_an_unreachable_host_is_given_up_and_its_rows_fail_at_once(tmp_path):
    # https to a plain http server: every connection fails in the TLS handshake ("ssl error")
    with ImageServer() as plain:
        urls = [f"https://down.test:{plain.port}/img/16x16.jpg?seed={i}" for i in range(40)]
        url_list = write_url_list([{"url": u} for u in urls], tmp_path / "u.csv", "csv")
        download(
            str(url_list),
            input_format="csv",
            output_folder=str(tmp_path / "out"),
            resolve=[f"down.test:{plain.port}:127.0.0.1"],
            thread_count=8,
            max_host_concurrency=2,
            retries=2,
        )
        rows = read_metadata(tmp_path / "out").to_pylist()
        assert {(r["status"], r["error_message"]) for r in rows} == {("failed_to_download", "ssl error")}
        assert plain.connections <= GIVE_UP_AFTER + 2  # not 40 x 3 attempts
    stats = next(iter(read_stats(tmp_path / "out").values()))
    assert stats["hosts"]["down.test"]["given_up"] == "ssl error"


def test_robots_txt_refuses_disallowed_paths_without_requesting_them(hosts_server, tmp_path):
    server = hosts_server
    server.configure_host("site.test", robots=(200, "User-agent: *\nDisallow: /private/\n"))
    allowed = [server.host_url("site.test", f"/img/20x20.jpg?seed={i}") for i in range(10)]
    refused = [server.host_url("site.test", f"/private/img/20x20.jpg?seed={i}") for i in range(10)]
    _, rows = run(server, tmp_path, allowed + refused, ["site.test"], processes_count=1)
    assert [rows[u]["status"] for u in allowed] == ["success"] * 10
    assert {(rows[u]["status"], rows[u]["error_message"]) for u in refused} == {("failed_to_download", ROBOTS_REFUSAL)}
    log = server.host_log("site.test")
    assert not [path for path in log if path.startswith("/private/")]  # never requested
    assert log.count("/robots.txt") == 1  # once per host per worker
    stats = next(iter(read_stats(tmp_path / "out").values()))
    assert stats["hosts"]["site.test"]["refusals"] == 10


def test_robots_txt_is_requested_once_per_host_per_worker_process(hosts_server, tmp_path):
    server = hosts_server
    urls = [u for i in range(4) for u in images(server, f"h{i}.test", 12)]
    run(server, tmp_path, urls, [f"h{i}.test" for i in range(4)], number_sample_per_shard=8, processes_count=2)
    for i in range(4):
        # 6 shards over 2 worker processes: each process asks each host at most once, whatever its shards
        assert 1 <= server.host_log(f"h{i}.test").count("/robots.txt") <= 2


def test_user_agent_groups_are_honoured(hosts_server, tmp_path):
    server = hosts_server
    robots = (
        "User-agent: *\nDisallow: /\n\nUser-agent: img2dataset\nDisallow: /private/\n\nUser-agent: mybot\nAllow: /\n"
    )
    server.configure_host("site.test", robots=(200, robots))
    server.put("/private/a.jpg", make_image(21, 21, "jpg"))
    urls = [server.host_url("site.test", "/img/20x20.jpg"), server.host_url("site.test", "/private/a.jpg")]
    _, rows = run(server, tmp_path, urls, ["site.test"], name="plain")
    assert [rows[u]["status"] for u in urls] == ["success", "failed_to_download"]  # the img2dataset group
    _, rows = run(server, tmp_path, urls, ["site.test"], name="token", user_agent_token="MyBot")
    assert [(rows[u]["status"], rows[u]["error_message"]) for u in urls] == [
        ("success", None)
    ] * 2  # our own token's group comes first
    assert server.host_log("site.test").count("/private/a.jpg") == 1


@pytest.mark.parametrize(
    "robots, status",
    [((404, "not here"), "success"), ((503, "busy"), "failed_to_download"), ((401, ""), "success")],
)
def test_robots_txt_status_decides(hosts_server, tmp_path, robots, status):
    server = hosts_server
    server.configure_host("site.test", robots=robots)
    urls = images(server, "site.test", 3)
    _, rows = run(server, tmp_path, urls, ["site.test"])
    assert [rows[u]["status"] for u in urls] == [status] * 3
    if status != "success":
        assert rows[urls[0]]["error_message"] == "robots.txt unreachable: HTTP Error 503"
        assert not [p for p in server.host_log("site.test") if p.startswith("/img/")]
    assert server.host_log("site.test").count("/robots.txt") == 1


@pytest.mark.parametrize("misbehaviour", ["stall", "drip", "huge"])
def test_a_misbehaving_robots_txt_cannot_hang_the_run(hosts_server, tmp_path, misbehaviour):
    server = hosts_server
    server.configure_host("bad.test", robots=misbehaviour)
    urls = images(server, "bad.test", 4) + [server.host_url("bad.test", "/private/img/20x20.jpg")]
    urls += images(server, "good.test", 4)
    start = time.monotonic()
    _, rows = run(server, tmp_path, urls, ["bad.test", "good.test"], timeout=2)
    assert time.monotonic() - start < 20
    assert [rows[u]["status"] for u in urls[5:]] == ["success"] * 4  # the other host is not held back
    bad = [(rows[u]["status"], rows[u]["error_message"]) for u in urls[:5]]
    if misbehaviour == "huge":  # 10 MiB: its first 500 KiB are read, and say /private/ is disallowed
        assert bad == [("success", None)] * 4 + [("failed_to_download", ROBOTS_REFUSAL)]
    else:  # no robots.txt within the deadline: refused, never requested
        assert {status for status, _ in bad} == {"failed_to_download"}
        assert not [p for p in server.host_log("bad.test") if p != "/robots.txt"]


def test_robots_txt_can_be_ignored_as_img2dataset_did(hosts_server, tmp_path):
    server = hosts_server
    server.configure_host("site.test", robots=(200, "User-agent: *\nDisallow: /\n"))
    urls = images(server, "site.test", 3) + [server.host_url("site.test", "/tdm/1/img/20x20.jpg")]
    _, rows = run(server, tmp_path, urls, ["site.test"], respect_robots_txt=False)
    assert [rows[u]["status"] for u in urls] == ["success"] * 4
    assert "/robots.txt" not in server.host_log("site.test")


def test_the_tdm_rep_header_refuses(hosts_server, tmp_path):
    server = hosts_server
    urls = [server.host_url("site.test", f"/tdm/{value}/img/20x20.jpg") for value in ("1", "0")]
    _, rows = run(server, tmp_path, urls, ["site.test"])
    assert (rows[urls[0]]["status"], rows[urls[0]]["error_message"]) == ("failed_to_download", TDM_REP_REFUSAL)
    assert rows[urls[1]]["status"] == "success"


def test_stats_file_lists_hosts(hosts_server, tmp_path):
    server = hosts_server
    run(server, tmp_path, images(server, "one.test", 3), ["one.test"])
    stats_file = next((tmp_path / "out").glob("*_stats.json"))
    hosts = json.loads(stats_file.read_text())["hosts"]
    assert hosts == {"one.test": {"requests": 4, "throttled": 0, "backoff_seconds": 0.0, "refusals": 0}}


def test_the_robots_txt_connection_is_kept_for_the_images(hosts_server, tmp_path):
    server = hosts_server
    server.configure_host("site.test", robots=(200, "User-agent: *\nDisallow: /private/\n"))
    _, rows = run(server, tmp_path, images(server, "site.test", 10), ["site.test"], thread_count=1)
    assert [row["status"] for row in rows.values()] == ["success"] * 10
    assert server.requests("site.test") == 11 and server.connections == 1

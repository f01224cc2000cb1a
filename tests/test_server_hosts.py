"""The test server's virtual hosts: per-host accounting and configuration, and the /tdm/, /once/ routes.

Politeness tests trust these numbers (a peak of concurrent requests, a count of 429s), so they are
checked here with a plain HTTP client that sets the Host header, on a server of this module's own
(short `max_stall`: the stalling robots.txt variants must end by themselves within seconds).
"""

from __future__ import annotations

import http.client
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.server import ROBOTS_RULES, ImageServer, Throttle, make_image

MAX_STALL = 2.0


@pytest.fixture(scope="module")
def hosts():
    with ImageServer(max_stall=MAX_STALL) as running:
        yield running


def get(server: ImageServer, host: str, path: str, timeout: float = 10) -> tuple[int, http.client.HTTPMessage, bytes]:
    """GET `path` from `server` with `Host: {host}:{port}`; status, headers, body."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Host": f"{host}:{server.port}"})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


def test_requests_are_counted_per_host_by_the_host_header(hosts):
    assert get(hosts, "A.Test", "/img/8x8.jpg")[0] == 200
    assert get(hosts, "a.test", "/status/404?x=1")[0] == 404
    assert get(hosts, "b.test", "/img/9x9.jpg")[0] == 200
    assert hosts.requests("a.test") == 2 and hosts.requests("A.TEST") == 2  # lowercased, port stripped
    assert hosts.host_log("a.test") == ["/img/8x8.jpg", "/status/404?x=1"]
    assert hosts.host_log("b.test") == ["/img/9x9.jpg"]
    assert hosts.requests("never.test") == 0 and hosts.host_log("never.test") == []
    assert {"a.test", "b.test"} <= set(hosts.seen_hosts())
    stats = hosts.host_stats("a.test")
    assert stats.active == 0 and stats.peak == 1 and stats.first_start <= stats.last_end


def test_one_request_after_another_never_seems_to_overlap(hosts):
    """A response counts as ended before its last bytes go out: a client's next request starts after."""
    connection = http.client.HTTPConnection("127.0.0.1", hosts.port, timeout=10)
    for i in range(200):
        connection.request("GET", f"/img/8x8.jpg?seed={i % 3}", headers={"Host": "serial.test"})
        connection.getresponse().read()
    connection.close()
    for _ in range(50):  # a new connection each time, as img2dataset 1.47 does
        assert get(hosts, "serial.test", "/status/404")[0] == 404
    assert hosts.requests("serial.test") == 250 and hosts.peak("serial.test") == 1


def test_a_request_without_a_name_counts_under_its_address(hosts):
    connection = http.client.HTTPConnection("127.0.0.1", hosts.port, timeout=10)
    connection.request("GET", "/img/7x7.jpg")  # http.client sends Host: 127.0.0.1:PORT
    assert connection.getresponse().status == 200
    connection.close()
    assert "/img/7x7.jpg" in hosts.host_log("127.0.0.1")


def test_peak_counts_concurrent_requests_until_their_responses_end(hosts):
    hosts.configure_host("peak.test", delay=0.5)
    hosts.configure_host("calm.test", delay=0.05)
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda i: get(hosts, "peak.test", f"/img/10x10.jpg?seed={i}")[0], range(6)))
    for _ in range(3):
        get(hosts, "calm.test", "/img/10x10.jpg")
    assert statuses == [200] * 6
    assert hosts.peak("peak.test") == 6 and hosts.active("peak.test") == 0
    assert hosts.peak("calm.test") == 1 and hosts.requests("calm.test") == 3


def test_the_throttle_answers_429_with_retry_after_beyond_its_rate(hosts):
    hosts.configure_host("slow.test", throttle=Throttle(rate=5, retry_after=2))
    started = time.monotonic()
    answers = [get(hosts, "slow.test", "/img/11x11.jpg") for _ in range(12)]
    assert time.monotonic() - started < 0.9  # all within one window
    assert [status for status, _, _ in answers] == [200] * 5 + [429] * 7
    assert all(headers["Retry-After"] == "2" for status, headers, _ in answers if status == 429)
    assert answers[0][2] == make_image(11, 11, "jpg")
    assert hosts.throttled("slow.test") == 7 and hosts.requests("slow.test") == 12
    assert get(hosts, "slow.test", "/robots.txt")[0] == 404  # robots.txt is never throttled
    time.sleep(1.05 - (time.monotonic() - started))  # the admitted requests leave the sliding window
    assert get(hosts, "slow.test", "/img/11x11.jpg")[0] == 200
    assert hosts.throttled("slow.test") == 7
    assert hosts.throttled("peak.test") == 0


def test_the_delay_holds_every_response(hosts):
    hosts.configure_host("late.test", delay=0.3)
    started = time.monotonic()
    assert get(hosts, "late.test", "/status/503")[0] == 503
    assert time.monotonic() - started >= 0.3


def test_robots_txt_is_404_unless_configured_then_what_was_given(hosts):
    assert get(hosts, "plain.test", "/robots.txt")[0] == 404
    hosts.configure_host("rules.test", robots=(200, "User-agent: *\nDisallow: /x/\n"))
    hosts.configure_host("down.test", robots=(503, b""))
    status, headers, body = get(hosts, "rules.test", "/robots.txt")
    assert (status, headers["Content-Type"], body) == (200, "text/plain", b"User-agent: *\nDisallow: /x/\n")
    assert get(hosts, "down.test", "/robots.txt")[:1] == (503,)
    assert get(hosts, "rules.test", "/img/12x12.jpg")[0] == 200  # other paths: the usual routes
    hosts.configure_host("rules.test")  # back to the default
    assert get(hosts, "rules.test", "/robots.txt")[0] == 404
    with pytest.raises(ValueError):
        hosts.configure_host("rules.test", robots="slow")


def test_a_huge_robots_txt_is_10_mib_of_which_the_first_lines_are_rules(hosts):
    hosts.configure_host("huge.test", robots="huge")
    started = time.monotonic()
    status, headers, body = get(hosts, "huge.test", "/robots.txt")
    assert status == 200 and len(body) == int(headers["Content-Length"]) >= 10 * 1024 * 1024
    assert body.startswith(b"User-agent: *\nDisallow: /private/\n")
    assert time.monotonic() - started < MAX_STALL  # sent at once


def test_a_client_that_reads_a_few_bytes_of_the_huge_robots_txt_and_leaves_is_fine(hosts):
    hosts.configure_host("huge2.test", robots="huge")
    connection = http.client.HTTPConnection("127.0.0.1", hosts.port, timeout=10)
    connection.request("GET", "/robots.txt", headers={"Host": "huge2.test"})
    assert connection.getresponse().read(100).startswith(ROBOTS_RULES)
    connection.close()
    assert get(hosts, "huge2.test", "/img/13x13.jpg")[0] == 200


def test_a_stalling_robots_txt_sends_headers_then_nothing_and_ends_by_itself(hosts):
    hosts.configure_host("stall.test", robots="stall")
    connection = http.client.HTTPConnection("127.0.0.1", hosts.port, timeout=MAX_STALL + 5)
    connection.request("GET", "/robots.txt", headers={"Host": "stall.test"})
    response = connection.getresponse()
    started = time.monotonic()
    assert response.status == 200
    assert hosts.active("stall.test") == 1  # a stall holds concurrency while it lasts
    with pytest.raises(http.client.IncompleteRead) as read:
        response.read()
    assert read.value.partial == b""
    assert MAX_STALL - 0.5 < time.monotonic() - started < MAX_STALL + 2
    connection.close()
    assert hosts.active("stall.test") == 0 and hosts.peak("stall.test") == 1


def test_a_dripping_robots_txt_sends_a_byte_a_second_and_ends_by_itself(hosts):
    hosts.configure_host("drip.test", robots="drip")
    started = time.monotonic()
    status, headers, body = get(hosts, "drip.test", "/robots.txt", timeout=MAX_STALL + 5)
    assert status == 200 and "Content-Length" not in headers
    assert body == ROBOTS_RULES[: len(body)] and 1 <= len(body) <= MAX_STALL + 1
    assert MAX_STALL - 0.5 < time.monotonic() - started < MAX_STALL + 2


def test_tdm_route_adds_the_tdm_reservation_header(hosts):
    status, headers, body = get(hosts, "tdm.test", "/tdm/1/img/14x14.jpg")
    assert (status, headers["tdm-reservation"], body) == (200, "1", make_image(14, 14, "jpg"))
    assert get(hosts, "tdm.test", "/tdm/0/status/404")[1]["tdm-reservation"] == "0"


def test_once_route_fails_the_first_request_of_a_name_then_serves(hosts):
    assert get(hosts, "once.test", "/once/503/first-pass/img/15x15.jpg")[0] == 503
    assert get(hosts, "once.test", "/once/503/first-pass/img/15x15.jpg")[:3:2] == (200, make_image(15, 15, "jpg"))
    assert get(hosts, "once.test", "/once/429/other/img/15x15.jpg")[0] == 429  # each name fails once
    assert get(hosts, "once.test", "/once/429/other/img/15x15.jpg")[0] == 200


def test_put_serves_given_bytes_on_every_host(hosts):
    hosts.put("/photos/1.jpg", b"\xff\xd8not really", "image/jpeg")
    for host in ("p1.test", "p2.test"):
        status, headers, body = get(hosts, host, "/photos/1.jpg")
        assert (status, headers["Content-Type"], body) == (200, "image/jpeg", b"\xff\xd8not really")
    assert get(hosts, "p1.test", "/slow/0/photos/1.jpg")[2] == b"\xff\xd8not really"


def test_urls_and_resolve_entries_name_this_server(hosts):
    assert hosts.host_url("a.test", "/img/1x1.jpg") == f"http://a.test:{hosts.port}/img/1x1.jpg"
    assert hosts.resolve("a.test", "b.test") == [f"a.test:{hosts.port}:127.0.0.1", f"b.test:{hosts.port}:127.0.0.1"]


def test_reset_counts_keeps_the_configuration(hosts):
    hosts.configure_host("reset.test", throttle=Throttle(rate=1))
    assert [get(hosts, "reset.test", "/img/16x16.jpg")[0] for _ in range(2)] == [200, 429]
    hosts.reset_counts()
    assert hosts.requests("reset.test") == hosts.throttled("reset.test") == hosts.peak("reset.test") == 0
    assert [get(hosts, "reset.test", "/img/16x16.jpg")[0] for _ in range(2)] == [200, 429]  # a new window
    assert hosts.throttled("reset.test") == 1

"""robots.txt rules, answers by status, the per-origin cache under threads, and its bounds.

Plain callables stand in for the fetcher here; the HTTP side is tested with the fetch stage.
"""

from __future__ import annotations

import threading
import time

import pytest

from img2dataset_ng.stages.robots import (
    MAX_ROBOTS_BYTES,
    ROBOTS_REFUSAL,
    NoAnswer,
    RobotsAnswer,
    RobotsCache,
    parse_robots,
    robots_url,
    shared_robots,
)

TOKENS = ("img2dataset-ng", "img2dataset")
PRIVATE = RobotsAnswer(200, b"User-agent: *\nDisallow: /private\n")


def allowed(robots: str | bytes, path: str, tokens=TOKENS) -> bool:
    body = robots.encode() if isinstance(robots, str) else robots
    return parse_robots(body, tokens).allows(f"https://example.com{path}")


class Fetcher:
    """A robots.txt server in a callable: one answer (or exception), counted calls, optional delay."""

    def __init__(self, answer=PRIVATE, delay=0.0):
        self.answer = answer
        self.delay = delay
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, url: str) -> RobotsAnswer:
        with self.lock:
            self.calls.append(url)
        time.sleep(self.delay)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


# ---- which group applies


def test_a_group_naming_a_token_applies_case_insensitively():
    robots = "User-agent: *\nAllow: /\n\nUser-agent: IMG2DATASET\nDisallow: /\n"
    assert not allowed(robots, "/a.jpg")
    assert not allowed(robots, "/a.jpg", tokens=("Img2Dataset",))
    assert allowed(robots, "/a.jpg", tokens=("someone-else",))


def test_group_names_match_exactly_not_as_prefixes_or_substrings():
    # Protego alone applies `img2dataset` to `img2dataset-ng` (a prefix); the choice here is exact
    robots = "User-agent: img2dataset\nDisallow: /\n\nUser-agent: *\nDisallow: /star\n"
    assert allowed(robots, "/a.jpg", tokens=("img2dataset-ng",))
    assert not allowed(robots, "/star", tokens=("img2dataset-ng",))
    robots = "User-agent: img2dataset-ngx\nDisallow: /\n\nUser-agent: *\nDisallow: /star\n"
    assert allowed(robots, "/a.jpg", tokens=("img2dataset-ng",))
    assert not allowed(robots, "/star", tokens=("img2dataset-ng",))
    robots = "User-agent: bot\nDisallow: /\n"
    assert allowed(robots, "/a.jpg", tokens=("my bot", "bot/1.0"))


def test_a_one_character_token_is_not_shadowed_by_an_earlier_star_group():
    robots = "User-agent: *\nDisallow: /\n\nUser-agent: a\nAllow: /\n"
    assert allowed(robots, "/x", tokens=("a",))
    assert not allowed(robots, "/x", tokens=("b",))


def test_the_first_preferred_token_with_a_group_decides():
    robots = (
        "User-agent: img2dataset\nDisallow: /old\n\n"
        "User-agent: img2dataset-ng\nDisallow: /new\n\n"
        "User-agent: mybot\nDisallow: /mine\n\n"
        "User-agent: *\nDisallow: /\n"
    )
    assert not allowed(robots, "/new/a.jpg")
    assert allowed(robots, "/old/a.jpg")  # only the chosen group applies, not every group naming us
    assert allowed(robots, "/other.jpg")  # nor the `*` group
    mine = ("MyBot", *TOKENS)
    assert not allowed(robots, "/mine/a.jpg", tokens=mine)
    assert allowed(robots, "/new/a.jpg", tokens=mine)
    assert not allowed(robots, "/old/a.jpg", tokens=("unknown", "img2dataset"))


def test_star_applies_only_when_no_token_has_a_group_and_nothing_applies_without_it():
    robots = "User-agent: other\nDisallow: /\n\nUser-agent: *\nDisallow: /private\n"
    assert not allowed(robots, "/private/a.jpg")
    assert allowed(robots, "/public/a.jpg")
    assert allowed("User-agent: other\nDisallow: /\n", "/a.jpg")


def test_groups_of_the_same_agent_are_merged():
    robots = (
        "User-agent: img2dataset-ng\nDisallow: /a\n\n"
        "User-agent: other\nDisallow: /b\n\n"
        "User-agent: Img2dataset-NG\nDisallow: /c\n\n"
        "User-agent: x\nUser-agent: img2dataset-ng\nDisallow: /d\n"
    )
    for path in ("/a", "/c", "/d"):
        assert not allowed(robots, path), path
    assert allowed(robots, "/b")


# ---- which rule applies (Protego's matching)


def test_longest_match_wins_and_allow_wins_a_tie():
    robots = "User-agent: *\nDisallow: /a\nAllow: /a/b\nAllow: /p\nDisallow: /p\nDisallow: /page/x.gif\nAllow: /page/\n"
    assert allowed(robots, "/a/b/c.jpg")
    assert not allowed(robots, "/a/c.jpg")
    assert allowed(robots, "/p")
    assert allowed(robots, "/page/y.gif")
    assert not allowed(robots, "/page/x.gif")


def test_wildcards_and_end_anchor():
    robots = "User-agent: *\nDisallow: /*.gif$\nDisallow: /private*/data\nDisallow: /fish*\n"
    assert not allowed(robots, "/a/b.gif")
    assert allowed(robots, "/a/b.gif?x=1")
    assert allowed(robots, "/a/b.gifs")
    assert not allowed(robots, "/private-1/data/x.jpg")
    assert allowed(robots, "/private-1/other.jpg")
    assert not allowed(robots, "/fish.jpg")
    assert not allowed(robots, "/fishheads/a.jpg")
    assert allowed(robots, "/Fish.jpg")  # paths are case-sensitive


def test_the_query_string_is_part_of_the_path():
    robots = "User-agent: *\nDisallow: /search?q=\nDisallow: /*?session=\nDisallow: /img.jpg$\n"
    assert not allowed(robots, "/search?q=cats")
    assert allowed(robots, "/search")
    assert allowed(robots, "/search?page=2")
    assert not allowed(robots, "/a/b.jpg?session=1")
    assert not allowed(robots, "/img.jpg")
    assert allowed(robots, "/img.jpg?size=large")


def test_percent_encoding_is_normalised():
    robots = "User-agent: *\nDisallow: /%7Euser\nDisallow: /café\nDisallow: /a%2fb\n"
    assert not allowed(robots, "/~user/a.jpg")
    assert not allowed(robots, "/%7euser/a.jpg")
    assert not allowed(robots, "/caf%C3%A9/a.jpg")
    assert not allowed(robots, "/café/a.jpg")
    assert not allowed(robots, "/a%2Fb")
    assert allowed(robots, "/a/b")  # an encoded slash is not a slash


def test_robots_txt_itself_is_always_allowed_and_never_fetched_for():
    assert allowed("User-agent: *\nDisallow: /\n", "/robots.txt")
    fetch = Fetcher(RobotsAnswer(200, b"User-agent: *\nDisallow: /\n"))
    cache = RobotsCache(TOKENS)
    assert cache.check("https://example.com/robots.txt", fetch, soon()) is None
    assert fetch.calls == []
    assert cache.check("ftp://example.com/a.jpg", fetch, soon()) is None
    assert fetch.calls == []


# ---- the body


def test_a_body_cut_at_the_limit_drops_its_last_line():
    head = b"User-agent: *\nDisallow: /keep\n"
    comment = b"#" * (MAX_ROBOTS_BYTES - len(head) - len(b"\nDisallow: /")) + b"\n"
    full = head + comment + b"Disallow: /private-area\n"
    cut = full[:MAX_ROBOTS_BYTES]
    assert cut.endswith(b"\nDisallow: /")
    assert allowed(cut, "/a.jpg")  # the half line, parsed, would refuse everything
    assert not allowed(cut, "/keep/a.jpg")
    assert allowed(full, "/a.jpg") and not allowed(full, "/keep/a.jpg")  # longer than the limit: cut here
    whole = head + comment[:-2] + b"\nDisallow: /\n"
    assert len(whole) == MAX_ROBOTS_BYTES
    assert not allowed(whole, "/a.jpg")  # ends with its newline: the last line counts


def test_bom_non_utf8_and_html():
    assert not allowed(b"\xef\xbb\xbfUser-agent: *\nDisallow: /x\n", "/x/a.jpg")
    latin1 = b"User-agent: *\nDisallow: /caf\xe9\nDisallow: /y\r\nDisallow: /z\r"
    assert not allowed(latin1, "/y/a.jpg")
    assert not allowed(latin1, "/z/a.jpg")
    assert allowed(latin1, "/cafe/a.jpg")
    html = b"<!DOCTYPE html><html><head><title>Not found</title></head>\n<body>Disallow: /\n</body></html>\n"
    assert allowed(html, "/a.jpg")
    assert allowed(bytes(range(256)) * 10, "/a.jpg")
    assert allowed(b"", "/a.jpg")


# ---- answers by status


@pytest.mark.parametrize("status", [404, 410, 401, 403, 301])
def test_unavailable_allows_everything(status):
    cache = RobotsCache(TOKENS)
    fetch = Fetcher(RobotsAnswer(status, b"User-agent: *\nDisallow: /\n"))
    assert cache.check("https://example.com/a.jpg", fetch, soon()) is None
    assert cache.cached("https://example.com/b.jpg")


@pytest.mark.parametrize(
    "answer, reason",
    [
        (RobotsAnswer(429), "HTTP Error 429"),
        (RobotsAnswer(500, b"User-agent: *\nAllow: /\n"), "HTTP Error 500"),
        (RobotsAnswer(503), "HTTP Error 503"),
    ],
)
def test_unreachable_refuses_every_url_of_the_origin(answer, reason):
    cache = RobotsCache(TOKENS)
    fetch = Fetcher(answer)
    assert cache.check("https://example.com/a.jpg", fetch, soon()) == f"robots.txt unreachable: {reason}"
    assert cache.check("https://example.com/b.jpg", fetch, soon()) == f"robots.txt unreachable: {reason}"
    assert cache.check("https://other.example/b.jpg", Fetcher(), soon()) is None
    assert len(fetch.calls) == 1
    assert cache.refusals == 2 and cache.requests == 2


@pytest.mark.parametrize(
    "answer, reason",
    [
        (RobotsAnswer(None, reason="timed out"), "timed out"),
        (RobotsAnswer(None, reason="connection refused"), "connection refused"),
        (RobotsAnswer(None), "no answer"),
    ],
)
def test_no_answer_refuses_but_is_not_kept(answer, reason):
    """The fetch stage fails such a url with the transport's reason; the host's politeness gives it up."""
    cache = RobotsCache(TOKENS)
    fetch = Fetcher(answer)
    with pytest.raises(NoAnswer) as raised:
        cache.check("https://example.com/a.jpg", fetch, soon())
    assert raised.value.reason == reason
    assert not cache.cached("https://example.com/a.jpg")
    with pytest.raises(NoAnswer):  # asked again, not answered from what was not an answer
        cache.check("https://example.com/a.jpg", fetch, soon())
    fetch.answer = RobotsAnswer(404)
    assert cache.check("https://example.com/b.jpg", fetch, soon()) is None
    assert len(fetch.calls) == 3


def test_disallowed_urls_get_the_refusal_and_are_counted():
    cache = RobotsCache(TOKENS)
    fetch = Fetcher()
    assert cache.check("https://example.com/private/a.jpg", fetch, soon()) == ROBOTS_REFUSAL
    assert cache.check("https://example.com/public/a.jpg", fetch, soon()) is None
    assert fetch.calls == ["https://example.com/robots.txt"]
    assert (cache.requests, cache.refusals) == (1, 1)


def test_a_failure_is_held_failure_ttl_then_asked_again():
    clock = Clock()
    cache = RobotsCache(TOKENS, failure_ttl=300, clock=clock)
    fetch = Fetcher(RobotsAnswer(503))
    assert cache.check("http://example.com/a.jpg", fetch, soon()) == "robots.txt unreachable: HTTP Error 503"
    clock.now += 299
    assert cache.cached("http://example.com/a.jpg")
    assert cache.check("http://example.com/a.jpg", fetch, soon()) is not None
    assert len(fetch.calls) == 1
    clock.now += 2
    assert not cache.cached("http://example.com/a.jpg")
    fetch.answer = RobotsAnswer(200, b"User-agent: *\nDisallow: /private\n")
    assert cache.check("http://example.com/a.jpg", fetch, soon()) is None
    assert len(fetch.calls) == 2 and cache.requests == 2


def test_an_answer_is_held_ttl_and_outlives_an_unreachable_refresh():
    clock = Clock()
    cache = RobotsCache(TOKENS, ttl=3600, failure_ttl=300, clock=clock)
    fetch = Fetcher()
    url = "https://example.com/private/a.jpg"
    assert cache.check(url, fetch, soon()) == ROBOTS_REFUSAL
    clock.now += 3599
    assert cache.check(url, fetch, soon()) == ROBOTS_REFUSAL
    assert len(fetch.calls) == 1
    clock.now += 2
    fetch.answer = RobotsAnswer(None, reason="timed out")
    assert cache.check(url, fetch, soon()) == ROBOTS_REFUSAL  # the expired rules, not "unreachable"
    assert cache.check("https://example.com/public/a.jpg", fetch, soon()) is None
    assert len(fetch.calls) == 2
    clock.now += 301  # unreachable answers keep the old rules for failure_ttl only, then ask again
    fetch.answer = RobotsAnswer(200, b"")
    assert cache.check(url, fetch, soon()) is None
    assert len(fetch.calls) == 3


# ---- threads


def test_one_fetch_per_origin_however_many_threads_ask():
    cache = RobotsCache(TOKENS)
    fetch = Fetcher(delay=0.3)
    start = threading.Barrier(40)
    results: list[str | None] = [""] * 40

    def ask(i: int) -> None:
        start.wait()
        results[i] = cache.check(f"https://example.com/private/{i}.jpg", fetch, soon())

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert fetch.calls == ["https://example.com/robots.txt"]
    assert results == [ROBOTS_REFUSAL] * 40
    assert (cache.requests, cache.refusals) == (1, 40)


def test_a_slow_origin_does_not_delay_another():
    cache = RobotsCache(TOKENS)
    release, fetching = threading.Event(), threading.Event()

    def slow(url: str) -> RobotsAnswer:
        fetching.set()
        release.wait(3)
        return RobotsAnswer(404)

    slow_thread = threading.Thread(target=cache.check, args=("https://slow.example/a.jpg", slow, soon()))
    slow_thread.start()
    assert fetching.wait(5)
    started = time.monotonic()
    assert cache.check("https://fast.example/private/a.jpg", Fetcher(), soon()) == ROBOTS_REFUSAL
    assert time.monotonic() - started < 1
    assert slow_thread.is_alive()
    release.set()
    slow_thread.join(5)
    assert cache.cached("https://slow.example/b.jpg")


def test_a_waiter_gives_up_at_its_deadline():
    cache = RobotsCache(TOKENS)
    release, fetching = threading.Event(), threading.Event()
    first: list[str | None] = []

    def slow(url: str) -> RobotsAnswer:
        fetching.set()
        release.wait(5)
        return RobotsAnswer(200, b"User-agent: *\nDisallow: /private\n")

    leader = threading.Thread(target=lambda: first.append(cache.check("https://example.com/a.jpg", slow, soon())))
    leader.start()
    assert fetching.wait(5)
    started = time.monotonic()
    assert cache.check("https://example.com/b.jpg", slow, time.monotonic() + 0.2) == "robots.txt timed out"
    assert 0.15 < time.monotonic() - started < 2
    assert cache.check("https://example.com/c.jpg", slow, time.monotonic() - 1) == "robots.txt timed out"
    assert not cache.cached("https://example.com/b.jpg")  # a timeout is not an answer
    release.set()
    leader.join(5)
    assert first == [None]
    assert cache.check("https://example.com/private/b.jpg", slow, soon()) == ROBOTS_REFUSAL
    assert cache.requests == 1


class Abort(BaseException):
    pass


@pytest.mark.parametrize("error", [ConnectionResetError("reset"), Abort()])
def test_a_fetch_that_raises_releases_the_waiters(error):
    clock = Clock()
    cache = RobotsCache(TOKENS, clock=clock)
    fetch = Fetcher(error, delay=0.5)
    results: list[str | None] = []
    start = threading.Barrier(5)

    def ask() -> None:
        start.wait()
        try:
            results.append(cache.check("https://example.com/a.jpg", fetch, soon()))
        except Abort:
            results.append("raised")

    threads = [threading.Thread(target=ask) for _ in range(5)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert time.monotonic() - started < 2
    assert len(fetch.calls) == 1 and len(results) == 5
    if isinstance(error, Abort):
        assert sorted(results) == ["raised"] + ["robots.txt unreachable: aborted"] * 4
        assert not cache.cached("https://example.com/a.jpg")
    else:
        assert results == ["robots.txt unreachable: ConnectionResetError"] * 5
        clock.now += 301
    fetch.answer, fetch.delay = RobotsAnswer(200, b""), 0
    assert cache.check("https://example.com/a.jpg", fetch, soon()) is None  # nothing left in flight
    assert len(fetch.calls) == 2


# ---- bounds


def test_least_recently_used_origins_are_evicted_by_count():
    cache = RobotsCache(TOKENS, max_origins=2)
    fetch = Fetcher()
    for host in ("a", "b", "c"):
        cache.check(f"https://{host}.example/x.jpg", fetch, soon())
    assert [cache.cached(f"https://{host}.example/") for host in "abc"] == [False, True, True]
    cache.check("https://b.example/y.jpg", fetch, soon())  # b used again: c is now the oldest
    cache.check("https://d.example/x.jpg", fetch, soon())
    assert [cache.cached(f"https://{host}.example/") for host in "bcd"] == [True, False, True]
    assert len(cache) == 2 and len(fetch.calls) == 4


def test_least_recently_used_origins_are_evicted_by_bytes():
    body = b"User-agent: *\n" + b"".join(b"Disallow: /private/%d\n" % i for i in range(500))
    size = parse_robots(body, TOKENS).size
    assert size > len(body)  # parsed rules are held, and they are bigger than their text
    cache = RobotsCache(TOKENS, max_bytes=int(2.5 * size))
    fetch = Fetcher(RobotsAnswer(200, body))
    for host in ("a", "b", "c"):
        assert cache.check(f"https://{host}.example/private/1/x.jpg", fetch, soon()) == ROBOTS_REFUSAL
    assert [cache.cached(f"https://{host}.example/") for host in "abc"] == [False, True, True]
    assert cache.held_bytes == 2 * size
    small = RobotsCache(TOKENS, max_bytes=size // 2)  # one entry over the bound is still held
    assert small.check("https://a.example/private/1/x.jpg", fetch, soon()) == ROBOTS_REFUSAL
    assert small.cached("https://a.example/")
    assert small.check("https://b.example/x.jpg", fetch, soon()) is None
    assert not small.cached("https://a.example/") and small.cached("https://b.example/")


def test_shared_robots_is_one_cache_per_token_tuple():
    assert shared_robots(TOKENS) is shared_robots(TOKENS)
    assert shared_robots(("mybot", *TOKENS)) is not shared_robots(TOKENS)
    assert shared_robots(("MyBot", *TOKENS)).tokens == ("mybot", *TOKENS)


# ---- origins


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://example.com/a/b.jpg?x=1#f", "http://example.com/robots.txt"),
        ("https://example.com", "https://example.com/robots.txt"),
        ("HTTPS://Example.COM/A.jpg", "https://example.com/robots.txt"),
        ("http://example.com:80/a.jpg", "http://example.com/robots.txt"),
        ("https://example.com:443/a.jpg", "https://example.com/robots.txt"),
        ("https://example.com:80/a.jpg", "https://example.com:80/robots.txt"),
        ("http://example.com:8080/a.jpg", "http://example.com:8080/robots.txt"),
        ("http://user:pass@example.com/a.jpg", "http://example.com/robots.txt"),
        ("http://[2001:DB8::1]:8080/a.jpg", "http://[2001:db8::1]:8080/robots.txt"),
        ("https://[::1]/a.jpg", "https://[::1]/robots.txt"),
        ("http://192.0.2.7:80/a.jpg", "http://192.0.2.7/robots.txt"),
        ("ftp://example.com/a.jpg", None),
        ("data:image/png;base64,AAAA", None),
        ("/relative/a.jpg", None),
        ("http:///a.jpg", None),
        ("http://example.com:99999/a.jpg", None),
        ("http://[::1/a.jpg", None),
    ],
)
def test_robots_url(url, expected):
    assert robots_url(url) == expected


def test_origins_differ_by_scheme_and_port_but_not_host_case():
    cache = RobotsCache(TOKENS)
    fetch = Fetcher()
    for url in ("https://Example.com/a", "https://EXAMPLE.COM/b", "http://example.com/a", "https://example.com:8443/a"):
        cache.check(url, fetch, soon())
    assert fetch.calls == [
        "https://example.com/robots.txt",
        "http://example.com/robots.txt",
        "https://example.com:8443/robots.txt",
    ]

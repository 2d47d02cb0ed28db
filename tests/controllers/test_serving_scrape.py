"""Scraping serving pods' Triton metrics (controllers/serving_scrape.py) from a real HTTP server on loopback:
a Triton page, an error status, a page too large, a page that is not Triton's, a port nobody listens on."""

from __future__ import annotations

import asyncio

from aiohttp import web

from e2e.cluster.processes import free_port
from kubemaas.controllers.modelservice_core import ScrapeTarget
from kubemaas.controllers.modelservice_core.verdict import PodSample
from kubemaas.controllers.serving_scrape import MAX_PAGE_BYTES, metrics_url, scrape
from kubemaas.serving_metrics import TritonCounters

PAGE = """\
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="digits",version="1"} 7
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="digits",reason="BACKEND",version="1"} 2
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="digits",version="1"} 7000
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="digits",version="1"} 70
"""


async def serve_and_scrape(
    pages: dict[str, tuple[int, str]], targets: list[ScrapeTarget], port: int
) -> list[PodSample]:
    """A server answering /metrics by the client's address (127.0.0.x stands for a pod IP)."""

    async def metrics(request: web.Request) -> web.Response:
        status, body = pages[request.host.split(":")[0]]
        return web.Response(status=status, text=body)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        return list(await scrape(targets, timeout=2.0, port=port))
    finally:
        await runner.cleanup()


def test_each_pod_is_scraped_and_every_failure_is_named() -> None:
    port = free_port()
    pages = {"127.0.0.1": (200, PAGE)}
    targets = [
        ScrapeTarget("good", "stable", "127.0.0.1"),
        ScrapeTarget("nobody", "canary", "127.0.0.2"),  # nothing listens there
        ScrapeTarget("no-ip", "canary", "not-an-ip"),
    ]
    good, nobody, no_ip = asyncio.run(serve_and_scrape(pages, targets, port))
    assert good == PodSample("good", "stable", TritonCounters(7, 2, 7000, 70, None))
    assert nobody.counters is None and "unreachable" in nobody.error
    assert no_ip.counters is None and no_ip.error == "the pod has no valid IP"


def test_error_status_oversized_and_foreign_pages_are_refused() -> None:
    for status, body, expected in [
        (503, PAGE, "HTTP 503"),
        (200, "x" * (MAX_PAGE_BYTES + 10), f"metrics page larger than {MAX_PAGE_BYTES} bytes"),
        (200, "# TYPE up gauge\nup 1\n", "no failure, success counter"),
    ]:
        port = free_port()
        (sample,) = asyncio.run(
            serve_and_scrape({"127.0.0.1": (status, body)}, [ScrapeTarget("p", "canary", "127.0.0.1")], port)
        )
        assert sample.counters is None and sample.error == expected


def test_ipv6_pod_addresses_are_bracketed() -> None:
    assert metrics_url("fd00::5") == "http://[fd00::5]:8002/metrics"
    assert metrics_url("198.18.0.4") == "http://198.18.0.4:8002/metrics"

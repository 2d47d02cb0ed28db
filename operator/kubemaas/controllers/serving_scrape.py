"""Reading the serving pods' Triton metrics (port 8002) for a Canary analysis: pod by pod, straight from each
pod's IP, with a timeout and a cap on the page's size.

Straight from the pods rather than through Prometheus: the window's figures are exact counter differences
taken at the window's start and end (no scrape interval to wait for or interpolate over, no `rate()` lag), the
operator needs nothing installed beside it, and a pod that does not answer is known by name (an Inconclusive
window), not hidden in a sum. The NetworkPolicy the operator writes lets anyone reach the metrics port.
A page never reaches a log, status or Event: only what went wrong, in the operator's own words.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence

import aiohttp

from kubemaas.controllers.modelservice_core import ScrapeTarget
from kubemaas.controllers.modelservice_core.verdict import PodSample
from kubemaas.manifests.modelservice import METRICS_PORT
from kubemaas.serving_metrics import InvalidMetrics, parse_triton_metrics

SCRAPE_TIMEOUT_SECONDS = 5.0
# Triton's page for one model with latency summaries is a few KiB; a page past this is not Triton's.
MAX_PAGE_BYTES = 1 << 20
# Pods scraped at once: a canary of a large ModelService must not open a thousand connections.
CONCURRENCY = 16


def metrics_url(ip: str, port: int = METRICS_PORT) -> str:
    host = f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip
    return f"http://{host}:{port}/metrics"


async def scrape(
    targets: Sequence[ScrapeTarget], timeout: float = SCRAPE_TIMEOUT_SECONDS, port: int = METRICS_PORT
) -> list[PodSample]:
    """Each target's counters, or the reason it has none; in the order of `targets`."""
    limit = asyncio.Semaphore(CONCURRENCY)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:

        async def one(target: ScrapeTarget) -> PodSample:
            async with limit:
                return await scrape_pod(session, target, port)

        return list(await asyncio.gather(*(one(t) for t in targets)))


async def scrape_pod(session: aiohttp.ClientSession, target: ScrapeTarget, port: int = METRICS_PORT) -> PodSample:
    def unavailable(why: str) -> PodSample:
        return PodSample(target.pod, target.track, None, why)

    try:
        url = metrics_url(target.ip, port)
    except ValueError:
        return unavailable("the pod has no valid IP")
    try:
        async with session.get(url, allow_redirects=False) as response:
            if response.status != 200:
                return unavailable(f"HTTP {response.status}")
            page = bytearray()
            async for chunk in response.content.iter_chunked(1 << 16):
                page += chunk
                if len(page) > MAX_PAGE_BYTES:
                    return unavailable(f"metrics page larger than {MAX_PAGE_BYTES} bytes")
    except TimeoutError:
        return unavailable("no answer within the timeout")
    except aiohttp.ClientError as error:
        return unavailable(f"unreachable ({type(error).__name__})")
    try:
        return PodSample(target.pod, target.track, parse_triton_metrics(page.decode("utf-8")))
    except UnicodeDecodeError:
        return unavailable("metrics page is not UTF-8")
    except InvalidMetrics as error:
        return unavailable(str(error))

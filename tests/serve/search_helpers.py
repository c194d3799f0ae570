"""Helpers of the search tests that drive a live ``search`` application."""

from __future__ import annotations

import asyncio

import httpx

from tests.auth import bearer


async def storm(url: str, n: int, tenant: str = "acme") -> list[httpx.Response]:
    """``n`` different hybrid searches sent to ``url`` at once (to fill a searcher's queue past its limit)."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0)) as client:
        return await asyncio.gather(*(
            client.post(url, json={"query": f"rivers and seas, variant {i}", "mode": "hybrid"},
                        headers=bearer(tenant))
            for i in range(n)
        ))

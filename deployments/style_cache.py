"""The style LoRA hot-swap cache of a diffusion stage: Ray Serve model multiplexing keyed by versioned style id.

The router sends a request to a replica that already holds its style; ``max_num_models_per_replica`` bounds the
cache and evicts least recently used styles; eviction pins-then-unloads through ``StyleAdapters`` so a batch
still sampling with an evicted style finishes with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ray import serve

from deployments.metrics import StageMetrics
from deployments.replica import ComputeThread
from serve_app.pipeline.lora import StyleAdapters
from serve_app.styles.folder import Style
from serve_app.styles.store import StyleStore


class LoadedStyle:
    """What the multiplexer caches. Serve calls ``__del__`` on eviction (and Python again on collection)."""

    def __init__(self, adapters: StyleAdapters, style: Style) -> None:
        self.adapters = adapters
        self.style = style
        self._released = False

    def __del__(self) -> None:
        # Runs twice per eviction; the second time the style may already be loaded again by a newer object.
        if not self._released:
            self._released = True
            self.adapters.release(self.style.versioned_id)


class StyleCache:
    def __init__(
        self, adapters: StyleAdapters, store: StyleStore, size: int, metrics: StageMetrics, compute: ComputeThread
    ) -> None:
        self.adapters = adapters
        self.store = store
        self.metrics = metrics
        self._run_lock = asyncio.Lock()

        async def load(versioned_id: str) -> LoadedStyle:
            # The ingress already checked it may be used; a first read of a version is storage round trips.
            style = await asyncio.to_thread(self.store.version, versioned_id)
            await compute.run(self.adapters.load, style.versioned_id, style.read_lora)
            return LoadedStyle(self.adapters, style)

        # serve.multiplexed wraps a plain function, not a bound method; sized from config at run time.
        self._get = serve.multiplexed(max_num_models_per_replica=size)(load)

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the pipeline without a style (for a dry-run load of an uploaded LoRA)."""
        async with self._run_lock:
            yield

    @asynccontextmanager
    async def activated(self) -> AsyncIterator[bool]:
        """Hold the pipeline for one run with the request's (or batch's) style active, loading it on a miss;
        yields whether it was already loaded. Loading changes the UNet's modules, so loads, evictions and runs
        take turns."""
        async with self._run_lock:
            versioned_id = serve.get_multiplexed_model_id()
            hit = self.adapters.is_loaded(versioned_id)
            style = (await self._get(versioned_id)).style
            self.metrics.lora_lookup(hit)
            with self.adapters.active(style.versioned_id, style.manifest.lora.scale):
                yield hit

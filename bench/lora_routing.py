"""The style LoRA cache at library scale, through the running service: how often a request finds its style
loaded, what a miss costs, and how Serve's multiplexed routing spreads styles over two blend-sampler replicas
against what one cache of their combined size would do.

The tiny profile (a copy of ``configs/serve.local.yaml`` in a fresh temporary folder, started as the README does)
with a library of ``--styles`` styles made by ``scripts/make_demo_styles.make_library`` (64 px, 6 steps),
``--blend-replicas`` blend-sampler replicas and ``--layout-replicas`` layout-generator replicas (both stages keep
a multiplexed LoRA cache of ``--cache-size`` styles per replica). First one request per blend replica, each for
one of the rarest styles (first-call warm-up; nearly always one per replica, as Serve sends a style no replica
holds to the replica with the fewest), then ``--requests`` small requests (N=1, K=1, ×1, 64 px, 6 steps) whose styles
follow a seeded Zipf law (``--zipf-s``; style rank r has weight 1/r^s, ``demo-001`` the most asked for), sent in
sequence order by ``--clients`` concurrent clients, each sending its next request when its last is answered.

Reported per diffusion stage (``stages.layout``, ``stages.blend``):

- ``hit_rate``: share of the measured requests whose response says ``lora_cache: hit`` for the stage (requests
  batched together share their batch's answer); ``load_hit_rate``: 1 − LoRA loads / requests, the loads from
  Serve's per-replica ``serve_multiplexed_models_load_counter`` less the warm-up's (one load per miss, as the
  simulations count).
- ``stage_ms``: median stage time (the response's ``timings``) of hits and of misses.
- ``simulated``: the hit rate of the same sequence (warm-up first, measured requests counted) through one LRU
  cache (``lru``, by size) of ``cache_size``, of ``replicas × cache_size`` (``combined_size``: the ideal for the
  stage's caches together), of twice and four times ``cache_size``, and the same through a frequency-aware cache
  instead (``lfu``: evicts the loaded style with the fewest recent requests, counts decaying 2 % a request); with
  several replicas, routed models: ``serve_policy`` (Serve's multiplex routing without its delays: a replica that
  holds the style, else one with the fewest styles, ties at random; the mean and range over 20 seeds),
  ``hash_partition`` (each style always to replica crc32(id) mod replicas) and ``serve_policy_lfu`` (Serve's
  routing over per-replica ``lfu`` caches).
- ``per_replica`` (which replica served each request comes from the replicas' logs, which name it by the
  ``x-request-id`` the bench sends): requests, hits, misses, distinct styles, LoRA loads; Serve's
  ``serve_num_multiplexed_models`` / ``serve_registered_multiplexed_model_id`` gauges at the end
  (``models_at_end``, ``registered_at_end``; exported every few seconds). ``loaded_on_several_at_end``: styles
  registered on several replicas. ``popular_styles_by_replica``: where the ``cache_size`` most requested styles'
  requests went.
- ``replay``: each replica's own LRU re-run over the requests it got, in sequence order: ``agrees`` (share of
  requests where it gives the response's hit/miss; 1.0: the replay is exact), ``loaded_at_end``,
  ``misses_held_elsewhere`` (misses for a style another replica held at the time: duplicate loads, capacity of
  the combined cache lost) and ``styles_on_several`` (styles held by several replicas at once at some point).

Overall: ``latency_ms``, median request latency, all and by the blend stage's outcome (and both stages');
``probe_timeouts``: the ingress's "Failed to get queue length" warnings by deployment probed (a replica that did
not answer the router's queue-length probe within its deadline; the router then tries replicas without the
style too).

    python bench/lora_routing.py [--requests 300] [--clients 4] [--styles 50] [--cache-size 4] [--zipf-s 1.1]

From another benchmark (``bench/`` on the path): ``run(["--requests", "60"])`` returns the same result as a dict.
About 4 minutes with the defaults on an idle 2-core machine (≈1 minute of it starting the service).

Shuts Serve and its Ray instance down however it ends (``serving.served``). Ray's temporary folder is put in the
bench's own (``RAY_TMPDIR``) so the replica logs read are this run's. Prints JSON on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families
from serving import REPO, served

sys.path.insert(0, str(REPO / "scripts"))
from make_demo_styles import make_library  # noqa: E402

STAGES = {"layout": "LayoutGenerator", "blend": "BlendSampler"}
"""The diffusion stages (each with a multiplexed LoRA cache) and their deployments."""
SMALL = {"num_candidates": 1, "top_k": 1, "upscale": 1, "size": 64, "steps": 6}
"""A small request of the tiny profile (bench/jobs.py's), so a LoRA load is a visible share of it."""
SIMULATION_SEEDS = 20


@dataclass
class Sent:
    """One request and what came back."""

    index: int  # position in the sequence; negative for the warm-up
    style: str
    latency_ms: float = 0.0
    status: int | str = 0
    lora_cache: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    replicas: dict[str, str] = field(default_factory=dict)  # stage -> replica id, from the logs

    @property
    def request_id(self) -> str:
        return f"lora-routing-{self.index + 1000:05d}"


# -- the workload ------------------------------------------------------------------------------------------
def zipf_sequence(styles: int, requests: int, s: float, seed: int) -> list[int]:
    """``requests`` style ranks (0 = the most asked for) drawn with weight 1/(rank+1)^s."""
    weights = [1 / (rank + 1) ** s for rank in range(styles)]
    return random.Random(seed).choices(range(styles), weights=weights, k=requests)


# -- cache models --------------------------------------------------------------------------------------------
class Cache:
    """The styles a cache model holds (``items``), for the routing models' questions."""

    items: OrderedDict[str, None] | set[str]

    def __contains__(self, key: str) -> bool:
        return key in self.items

    def __len__(self) -> int:
        return len(self.items)


class LRU(Cache):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[str, None] = OrderedDict()

    def touch(self, key: str) -> bool:
        """Use ``key``, loading it (and evicting the least recently used) on a miss; whether it was a hit."""
        if key in self.items:
            self.items.move_to_end(key)
            return True
        if len(self.items) >= self.capacity:
            self.items.popitem(last=False)
        self.items[key] = None
        return False


class DecayedLFU(Cache):
    """Evicts the loaded style with the fewest recent requests: every style's count decays by ``decay`` per request
    seen (0.98: a half-life of about 35 requests, so a holiday style that goes cold leaves), the new one is
    counted before the choice."""

    def __init__(self, capacity: int, decay: float = 0.98) -> None:
        self.capacity, self.decay = capacity, decay
        self.counts: defaultdict[str, float] = defaultdict(float)
        self.items: set[str] = set()

    def touch(self, key: str) -> bool:
        for style in self.counts:
            self.counts[style] *= self.decay
        self.counts[key] += 1
        if key in self.items:
            return True
        if len(self.items) >= self.capacity:
            self.items.remove(min(self.items, key=lambda style: self.counts[style]))
        self.items.add(key)
        return False


def rate(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 3) if hits else None


def lru_hit_rate(sequence: list[str], capacity: int, skip: int, cache_type: type = LRU) -> float:
    cache = cache_type(capacity)
    return rate([cache.touch(style) for style in sequence][skip:])


def serve_policy_hit_rate(
    sequence: list[str], replicas: int, capacity: int, skip: int, seed: int, cache_type: type = LRU
) -> float:
    """Serve's multiplex routing (``MultiplexMixin.apply_multiplex_routing``) without its delays: a replica that
    holds the style; else the replicas with the fewest styles loaded, one at random (power of two choices among
    equal queues)."""
    chooser = random.Random(seed)
    caches = [cache_type(capacity) for _ in range(replicas)]
    hits = []
    for style in sequence:
        holders = [cache for cache in caches if style in cache]
        if not holders:
            fewest = min(len(cache) for cache in caches)
            holders = [cache for cache in caches if len(cache) == fewest]
        hits.append(chooser.choice(holders).touch(style))
    return rate(hits[skip:])


def hash_partition_hit_rate(sequence: list[str], replicas: int, capacity: int, skip: int) -> float:
    caches = [LRU(capacity) for _ in range(replicas)]
    return rate([caches[zlib.crc32(style.encode()) % replicas].touch(style) for style in sequence][skip:])


def simulated(sequence: list[str], replicas: int, capacity: int, skip: int) -> dict:
    sizes = sorted({capacity, 2 * capacity, replicas * capacity, 4 * capacity})
    result = {
        "combined_size": replicas * capacity,
        "lru": {str(size): lru_hit_rate(sequence, size, skip) for size in sizes},
        "lfu": {str(size): lru_hit_rate(sequence, size, skip, DecayedLFU) for size in sizes},
    }
    if replicas > 1:
        runs = [serve_policy_hit_rate(sequence, replicas, capacity, skip, seed) for seed in range(SIMULATION_SEEDS)]
        result["serve_policy"] = round(statistics.mean(runs), 3)
        result["serve_policy_range"] = [min(runs), max(runs)]
        result["hash_partition"] = hash_partition_hit_rate(sequence, replicas, capacity, skip)
        lfu = [
            serve_policy_hit_rate(sequence, replicas, capacity, skip, seed, DecayedLFU)
            for seed in range(SIMULATION_SEEDS)
        ]
        result["serve_policy_lfu"] = round(statistics.mean(lfu), 3)
    return result


# -- the service ---------------------------------------------------------------------------------------------
def bench_config(base: Path, folder: Path, styles_dir: Path, args: argparse.Namespace) -> Path:
    """``base`` with the library, the cache size and the two diffusion stages' replica counts, written to
    ``folder``."""
    config = yaml.safe_load(base.read_text())
    config["http_options"]["port"] = args.port
    (app,) = config["applications"]
    app["args"] |= {"styles_dir": str(styles_dir), "lora_cache_size": args.cache_size}
    replicas = {"LayoutGenerator": args.layout_replicas, "BlendSampler": args.blend_replicas}
    entries = app.setdefault("deployments", [])
    for name, count in replicas.items():
        entry = next((entry for entry in entries if entry["name"] == name), None)
        if entry is None:
            entries.append(entry := {"name": name})
        entry.pop("num_replicas", None)
        entry["autoscaling_config"] = {"min_replicas": count, "max_replicas": count}
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def send(client: httpx.Client, url: str, image: bytes, request: Sent) -> None:
    fields = SMALL | {"style": request.style, "seed": abs(request.index)}
    began = time.perf_counter()
    try:
        response = client.post(
            url, files={"image": ("face.png", image)}, data=fields, headers={"x-request-id": request.request_id},
            timeout=600,
        )
    except httpx.HTTPError as error:
        request.status = type(error).__name__
    else:
        request.status = response.status_code
        if response.status_code == 200:
            body = response.json()
            request.lora_cache, request.timings = body["lora_cache"], body["timings"]
    request.latency_ms = (time.perf_counter() - began) * 1000


def run_clients(url: str, image: bytes, requests: list[Sent], clients: int) -> float:
    """``requests`` in order from ``clients`` clients, each sending the next unsent one when its last is answered;
    the seconds they took."""
    sent = iter(requests)
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client() as session:
            while True:
                with lock:
                    request = next(sent, None)
                if request is None:
                    return
                send(session, url, image, request)

    began = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return time.perf_counter() - began


def scrape(metrics_url: str) -> dict[str, dict]:
    """From Ray's Prometheus text, per diffusion stage and replica: LoRA loads, and the styles registered as
    loaded."""
    found: dict[str, dict] = {
        stage: defaultdict(lambda: {"loads": 0, "loaded": set(), "models": None}) for stage in STAGES
    }
    deployments = {deployment: stage for stage, deployment in STAGES.items()}
    text = httpx.get(metrics_url, timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            stage = deployments.get(sample.labels.get("deployment", ""))
            if stage is None or sample.labels.get("application") != "portraits" or "replica" not in sample.labels:
                continue
            if sample.name == "ray_serve_multiplexed_models_load_counter_total":
                found[stage][sample.labels["replica"]]["loads"] += int(sample.value)
            elif sample.name == "ray_serve_num_multiplexed_models":
                found[stage][sample.labels["replica"]]["models"] = int(sample.value)
            elif sample.name == "ray_serve_registered_multiplexed_model_id" and sample.value == 1:
                found[stage][sample.labels["replica"]]["loaded"].add(sample.labels["model_id"].split("@")[0])
    return found


def settled_metrics(metrics_url: str, expected_loads: dict[str, int], wait_s: float) -> dict[str, dict]:
    """The metrics once Ray exported what the run did (every few seconds): at least ``expected_loads`` per stage
    (the misses the responses reported, a lower bound once batches are counted once) and unchanged over two
    reads; the last read after ``wait_s``."""
    deadline, last = time.monotonic() + wait_s, None
    while True:
        now = scrape(metrics_url)
        loads = {stage: sum(r["loads"] for r in now[stage].values()) for stage in STAGES}
        key = (loads, {stage: {r: sorted(v["loaded"]) for r, v in now[stage].items()} for stage in STAGES})
        if all(loads[stage] >= expected_loads[stage] for stage in STAGES) and key == last:
            return now
        if time.monotonic() > deadline:
            return now
        last = key
        time.sleep(4)


REQUEST_LINE = re.compile(r"^\S+ \S+ \S+ portraits_(\w+) (\w+) (lora-routing-\d+) -- CALL __call__")


PROBE_TIMEOUT = re.compile(r"Failed to get queue length from Replica\(id='\w+', deployment='(\w+)'")


def replicas_from_logs(session_logs: Path, requests: dict[str, Sent]) -> dict[str, int]:
    """Names each request's replica per diffusion stage from the replicas' logs; the ingress's queue-length probe
    timeouts, by deployment probed."""
    deployments = {deployment: stage for stage, deployment in STAGES.items()}
    for path in session_logs.glob("serve/replica_portraits_*.log"):
        for line in path.read_text(errors="replace").splitlines():
            match = REQUEST_LINE.match(line)
            if match and match[1] in deployments and match[3] in requests:
                requests[match[3]].replicas[deployments[match[1]]] = match[2]
    probe_timeouts = Counter()
    for path in session_logs.glob("serve/replica_portraits_PortraitIngress_*.log"):
        probe_timeouts.update(PROBE_TIMEOUT.findall(path.read_text(errors="replace")))
    return dict(sorted(probe_timeouts.items()))


# -- what the run says ---------------------------------------------------------------------------------------
def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def replay(stage: str, ordered: list[Sent], capacity: int, warmup: int) -> dict:
    """Each replica's own LRU over the requests it got, in sequence order: against the responses, and where a
    miss's style was held by another replica at the time."""
    caches: dict[str, LRU] = defaultdict(lambda: LRU(capacity))
    agrees = compared = held_elsewhere = misses = 0
    on_several: set[str] = set()
    for request in ordered:
        replica = request.replicas.get(stage)
        if replica is None:
            continue
        elsewhere = any(request.style in cache for name, cache in caches.items() if name != replica)
        hit = caches[replica].touch(request.style)
        if sum(request.style in cache for cache in caches.values()) > 1:
            on_several.add(request.style)
        if request.index < 0 or stage not in request.lora_cache:
            continue
        compared += 1
        agrees += hit == (request.lora_cache[stage] == "hit")
        if request.lora_cache[stage] == "miss":
            misses += 1
            held_elsewhere += elsewhere
    return {
        "loaded_at_end": {replica: sorted(cache.items) for replica, cache in sorted(caches.items())},
        "agrees": round(agrees / compared, 3) if compared else None,
        "misses": misses,
        "misses_held_elsewhere": held_elsewhere,
        "styles_on_several": sorted(on_several),
    }


def stage_report(stage: str, ordered: list[Sent], sequence: list[str], metrics: dict, args, warmup: int) -> dict:
    measured = [r for r in ordered if r.index >= 0 and stage in r.lora_cache]
    hits = [r.lora_cache[stage] == "hit" for r in measured]
    replicas = args.blend_replicas if stage == "blend" else args.layout_replicas
    warmup_misses = sum(r.lora_cache.get(stage) == "miss" for r in ordered if r.index < 0)
    loads = sum(r["loads"] for r in metrics.values())
    per_replica = {}
    served_by = defaultdict(list)
    for request in ordered:
        if request.index >= 0 and stage in request.replicas:
            served_by[request.replicas[stage]].append(request)
    for replica in sorted(set(served_by) | set(metrics)):
        got = served_by.get(replica, [])
        outcomes = Counter(r.lora_cache.get(stage, "?") for r in got)
        per_replica[replica] = {
            "requests": len(got),
            "hits": outcomes["hit"],
            "misses": outcomes["miss"],
            "distinct_styles": len({r.style for r in got}),
            "loads": metrics.get(replica, {}).get("loads"),
            "models_at_end": metrics.get(replica, {}).get("models"),
            "registered_at_end": sorted(metrics.get(replica, {}).get("loaded", ())),
        }
    loaded = Counter(style for r in per_replica.values() for style in r["registered_at_end"])
    popular = [style for style, _ in Counter(r.style for r in ordered if r.index >= 0).most_common(args.cache_size)]
    spread = {style: dict(Counter(r.replicas[stage] for r in ordered if r.style == style and stage in r.replicas))
              for style in popular}
    return {
        "replicas": replicas,
        "hit_rate": rate(hits),
        "load_hit_rate": round(1 - (loads - warmup_misses) / len(measured), 3) if measured and loads else None,
        "loads": loads - warmup_misses,
        "stage_ms": {
            "hit": median([r.timings[stage] for r in measured if r.lora_cache[stage] == "hit"]),
            "miss": median([r.timings[stage] for r in measured if r.lora_cache[stage] == "miss"]),
        },
        "simulated": simulated(sequence, replicas, args.cache_size, warmup),
        "per_replica": per_replica,
        "loaded_on_several_at_end": sorted(style for style, n in loaded.items() if n > 1),
        "popular_styles_by_replica": spread,
        "replay": replay(stage, ordered, args.cache_size, warmup),
    }


def run(argv: list[str] | tuple[str, ...] = ()) -> dict:
    """The whole benchmark with these command-line arguments (none: the defaults); what ``main`` prints."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients, each one request at a time")
    parser.add_argument("--styles", type=int, default=50, help="styles in the library")
    parser.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of the style popularity")
    parser.add_argument("--cache-size", type=int, default=4, help="lora_cache_size: styles per replica")
    parser.add_argument("--blend-replicas", type=int, default=2)
    parser.add_argument("--layout-replicas", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the style sequence")
    parser.add_argument("--port", type=int, default=8000, help="the service's HTTP port")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Ray's Prometheus port")
    parser.add_argument("--metrics-wait-s", type=float, default=45, help="at most this long for Ray's export")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "serve.local.yaml")
    parser.add_argument("--requests-out", type=Path, help="also write every request's record (JSON lines) here")
    args = parser.parse_args(list(argv))

    from serve_app.sample import sample_face

    image = sample_face()
    # A short name: Ray's socket paths live under it (RAY_TMPDIR below).
    with tempfile.TemporaryDirectory(prefix="lr-", ignore_cleanup_errors=True) as folder:
        folder = Path(folder)
        ids = make_library(folder / "styles", args.styles)
        ranks = zipf_sequence(args.styles, args.requests, args.zipf_s, args.seed)
        warmup = [Sent(index - args.blend_replicas, ids[-1 - index]) for index in range(args.blend_replicas)]
        measured = [Sent(index, ids[rank]) for index, rank in enumerate(ranks)]
        ordered = warmup + measured
        config = bench_config(args.config, folder, folder / "styles", args)
        began = time.perf_counter()
        with ray_tmpdir(folder), served(config, args.port, start_timeout_s=600, metrics_port=args.metrics_port) as url:
            start_s = time.perf_counter() - began
            run_clients(url, image, warmup, 1)
            seconds = run_clients(url, image, measured, args.clients)
            # every style a response reported missed was loaded at least once
            expected = {
                stage: len({r.style for r in ordered if r.lora_cache.get(stage) == "miss"}) for stage in STAGES
            }
            metrics = settled_metrics(f"http://127.0.0.1:{args.metrics_port}/metrics", expected, args.metrics_wait_s)
            logs = folder / "ray" / "session_latest" / "logs"
            probe_timeouts = replicas_from_logs(logs, {r.request_id: r for r in ordered})
    if args.requests_out:
        args.requests_out.write_text("".join(json.dumps(asdict(r)) + "\n" for r in ordered))
    statuses = Counter(str(r.status) for r in measured)
    ok = [r for r in measured if r.status == 200]
    sequence = [r.style for r in ordered]
    top = Counter(r.style for r in measured).most_common(8)
    result = {
        "profile": "tiny",
        "cpus": os.cpu_count(),
        "workload": {
            "styles": args.styles,
            "requests": args.requests,
            "warmup": len(warmup),
            "clients": args.clients,
            "zipf_s": args.zipf_s,
            "seed": args.seed,
            "request": SMALL,
            "distinct_styles": len({r.style for r in measured}),
            "top_styles": {style: n for style, n in top},
        },
        "cache_size": args.cache_size,
        "service_start_s": round(start_s, 1),
        "seconds": round(seconds, 1),
        "statuses": dict(statuses),
        "latency_ms": {
            "all": median([r.latency_ms for r in ok]),
            "blend_hit": median([r.latency_ms for r in ok if r.lora_cache.get("blend") == "hit"]),
            "blend_miss": median([r.latency_ms for r in ok if r.lora_cache.get("blend") == "miss"]),
            "both_hit": median([r.latency_ms for r in ok if set(r.lora_cache.values()) == {"hit"}]),
            "both_miss": median([r.latency_ms for r in ok if set(r.lora_cache.values()) == {"miss"}]),
        },
        "requests_logged": {stage: sum(stage in r.replicas for r in ordered) for stage in STAGES},
        "probe_timeouts": probe_timeouts,
        "stages": {
            stage: stage_report(stage, ordered, sequence, metrics[stage], args, len(warmup)) for stage in STAGES
        },
    }
    return result


@contextmanager
def ray_tmpdir(folder: Path) -> Iterator[None]:
    """Ray's temporary folder (sessions, logs) under ``folder`` for what starts meanwhile: ``served`` passes this
    process's environment on to ``serve run``."""
    before = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = before


def main() -> None:
    print(json.dumps(run(sys.argv[1:])))


if __name__ == "__main__":
    main()

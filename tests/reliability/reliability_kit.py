"""What the reliability suite shares: fast portrait requests, their answers as a client sees them, and the
replicas of the served graph (listed, and killed, through Ray)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import ray
from ray import serve

from serve_app.app import STAGE_DEPLOYMENTS

APP = "portraits"
STAGES = tuple(cls.__name__ for cls in STAGE_DEPLOYMENTS)  # the stage deployments, by name
# The smallest real generation: every stage runs, in well under a second on the tiny profile.
FAST = {"num_candidates": "1", "top_k": "1", "seed": "13", "steps": "4", "size": "64", "upscale": "1"}


@dataclass(frozen=True)
class Answer:
    """What a client sees of a response: status, the error code of a JSON error body, and whether the body (or,
    for an event stream, every event's data) was JSON."""

    status: int
    code: str | None
    is_json: bool
    retry_after: str | None = None
    events: tuple[str, ...] = ()


def answer_of(response: httpx.Response) -> Answer:
    retry_after = response.headers.get("retry-after")
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return stream_answer(response.status_code, response.text, retry_after)
    try:
        body = response.json()
    except ValueError:
        return Answer(response.status_code, None, False, retry_after)
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    return Answer(response.status_code, code, True, retry_after)


def stream_answer(status: int, text: str, retry_after: str | None) -> Answer:
    """An event stream's answer: its events in order, and the code of an in-band ``error`` event."""
    events, code, is_json = [], None, True
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        events.append(lines.get("event", ""))
        try:
            data = json.loads(lines.get("data", ""))
        except ValueError:
            is_json = False
            continue
        if lines.get("event") == "error":
            code = data["error"]["code"]
    return Answer(status, code, is_json, retry_after, tuple(events))


def post_portrait(url: str, image: bytes, fields: dict | None = None, timeout: float = 120, **kwargs) -> Answer:
    """A multipart portrait request: FAST with ``fields`` over it (a field set to None is left out)."""
    data = {name: value for name, value in {**FAST, **(fields or {})}.items() if value is not None}
    files = {"image": ("face.png", image, "application/octet-stream")}
    return answer_of(httpx.post(f"{url}/v1/portraits", files=files, data=data, timeout=timeout, **kwargs))


def post_declaring(url: str, path: str, length: int, body: bytes, content_type: str, **headers: str) -> Answer:
    """A POST whose Content-Length promises ``length`` bytes but sends only ``body`` (httpx refuses to send
    that): the answer shows the service refused it from its headers, without waiting for the body."""
    host, port = url.removeprefix("http://").split(":")
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {length}\r\n{head}\r\n")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(head.encode() + body)
        response = http.client.HTTPResponse(connection)
        response.begin()
        content = response.read()
    return answer_of(httpx.Response(response.status, headers=response.getheaders(), content=content))


def concurrently(requests: Iterable[Callable[[], Answer]], clients: int) -> list[tuple[Answer, float]]:
    """Run the requests from ``clients`` threads; each answer with its latency in seconds."""

    def timed(request: Callable[[], Answer]) -> tuple[Answer, float]:
        start = time.perf_counter()
        answer = request()
        return answer, time.perf_counter() - start

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(timed, requests))


def replicas(app: str = APP) -> dict[str, set[str]]:
    """The live replica actors of each deployment of ``app`` (a restarted replica has a new name)."""
    found: dict[str, set[str]] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        prefix, _, rest = actor["name"].partition("::")
        app, _, deployment = rest.partition("#")
        if prefix == "SERVE_REPLICA" and app == APP:
            found.setdefault(deployment.partition("#")[0], set()).add(actor["name"])
    return found


def kill_replica(deployment: str, app: str = APP) -> str:
    """SIGKILL the process of one replica of ``deployment`` (as the OOM killer or a crash would); its name."""
    name = sorted(replicas(app)[deployment])[0]
    actor = ray.get_actor(name, namespace="serve")
    actor.__ray_call__.remote(lambda _: os.kill(os.getpid(), signal.SIGKILL))
    return name


def wait_until(condition: Callable[[], bool], within_s: float, every_s: float = 0.5) -> float:
    """Seconds until ``condition()`` held; raises if it did not within ``within_s``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > within_s:
            raise TimeoutError(f"not within {within_s} s")
        time.sleep(every_s)
    return time.monotonic() - start


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def replaced(deployment: str, before: set[str]) -> bool:
    """Serve runs ``deployment`` again after a kill: a replica not among ``before`` (the replicas at the kill) is
    up, and every replica Serve counts is RUNNING in a HEALTHY deployment."""
    if not replicas().get(deployment, set()) - before:
        return False
    overview = serve.status().applications[APP].deployments[deployment]
    counted = [state for state, count in overview.replica_states.items() if count]
    return overview.status == "HEALTHY" and bool(counted) and all(state == "RUNNING" for state in counted)


def replica_pids(deployment: str) -> dict[str, int]:
    """The process id of every live replica of ``deployment``, by replica name."""

    def pid(name: str) -> int:
        return ray.get(ray.get_actor(name, namespace="serve").__ray_call__.remote(lambda _: os.getpid()))

    return {name: pid(name) for name in replicas().get(deployment, set())}


def exited(pid: int) -> bool:
    """The process is gone, or a zombie its parent has yet to reap (read from Linux's /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True

"""Checks an uploaded style LoRA before it can become visible: a real ``.safetensors`` file (header checked,
so a pickle renamed ``.safetensors`` is refused without being unpickled), within size, dtype and rank limits,
whose tensors all target modules of the base model (diffusers or kohya naming), and that loads onto it.

Only the dry-run load needs torch: the ingress reads a ``LoraSummary`` without loading it."""

from __future__ import annotations

import functools
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serve_app.pipeline.errors import InvalidLoraError

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

ALLOWED_DTYPES = frozenset({"F16", "BF16", "F32"})
MAX_HEADER_BYTES = 16 * 1024 * 1024
DRY_RUN_ADAPTER = "upload_dry_run"
# diffusers/peft: unet.<module>.lora_A.weight, unet.<module>.lora.down.weight …; kohya: lora_unet_<module_with_underscores>.lora_down.weight
LORA_SUFFIX = re.compile(r"\.(lora_[AB]\.weight|lora\.(down|up)\.weight|lora_(down|up)\.weight|alpha)$")
DOWN_SUFFIXES = (".lora_A.weight", ".lora.down.weight", ".lora_down.weight")
PREFIXES = {"unet.": "unet", "text_encoder.": "text_encoder", "lora_unet_": "unet", "lora_te_": "text_encoder"}


@dataclass(frozen=True)
class LoraLimits:
    max_bytes: int = 256 * 1024 * 1024
    max_rank: int = 128


@dataclass(frozen=True)
class LoraSummary:
    tensors: int
    rank: int
    targets: frozenset[str]


def read_header(data: bytes, limits: LoraLimits) -> dict[str, dict]:
    """The safetensors header (tensor name → dtype, shape, data offsets), validated against the file."""
    if len(data) > limits.max_bytes:
        raise InvalidLoraError(f"LoRA file is {len(data)} bytes; the limit is {limits.max_bytes}")
    if data[:1] == b"\x80" or data[:4] == b"PK\x03\x04":
        raise InvalidLoraError("the LoRA file is a pickle / torch checkpoint, not safetensors; convert it first")
    if len(data) < 8:
        raise InvalidLoraError("the LoRA file is too short to be safetensors")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > min(MAX_HEADER_BYTES, len(data) - 8):
        raise InvalidLoraError("the LoRA file is not safetensors (bad header length) or is truncated")
    try:
        header = json.loads(data[8 : 8 + header_size])
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep to parse
        raise InvalidLoraError("the LoRA file is not safetensors (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise InvalidLoraError("the LoRA file is not safetensors (its header is not a JSON object)")
    header.pop("__metadata__", None)
    payload = len(data) - 8 - header_size
    for name, entry in header.items():
        if not well_formed_entry(entry):
            raise InvalidLoraError(f"the LoRA file's header entry {name!r} is malformed")
        if entry["data_offsets"][1] > payload:
            raise InvalidLoraError(f"the LoRA file is truncated (tensor {name!r} runs past its end)")
    if not header:
        raise InvalidLoraError("the LoRA file holds no tensors")
    return header


def well_formed_entry(entry: object) -> bool:
    """A safetensors tensor entry: a dtype name, a shape of sizes, and two ordered offsets."""
    if not isinstance(entry, dict) or {"dtype", "shape", "data_offsets"} - set(entry):
        return False
    shape, offsets = entry["shape"], entry["data_offsets"]
    return (
        isinstance(entry["dtype"], str)
        and isinstance(shape, list)
        and all(type(size) is int and size >= 0 for size in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(offset) is int for offset in offsets)
        and 0 <= offsets[0] <= offsets[1]
    )


def base_modules(pipe: StableDiffusionPipeline) -> dict[str, set[str]]:
    """Module paths of the base model's UNet and text encoder, dotted and kohya-underscored."""
    modules = {}
    for component in ("unet", "text_encoder"):
        names = {name for name, _ in getattr(pipe, component).named_modules() if name}
        modules[component] = names | {name.replace(".", "_") for name in names}
    return modules


def target_module(key: str) -> tuple[str, str] | None:
    """(component, module path) a LoRA tensor name targets, or None if it follows no known naming."""
    for prefix, component in PREFIXES.items():
        if key.startswith(prefix):
            stripped = LORA_SUFFIX.sub("", key.removeprefix(prefix))
            if stripped != key.removeprefix(prefix):
                return component, stripped
    return None


def inspect_lora(data: bytes, modules: dict[str, set[str]], limits: LoraLimits = LoraLimits()) -> LoraSummary:
    """Everything but the dry-run load; raises InvalidLoraError naming what is wrong."""
    header = read_header(data, limits)
    unknown, rank, targets = [], 0, set()
    for name, entry in header.items():
        if entry["dtype"] not in ALLOWED_DTYPES:
            raise InvalidLoraError(f"tensor {name!r} has dtype {entry['dtype']}; allowed: {sorted(ALLOWED_DTYPES)}")
        target = target_module(name)
        if target is None or target[1] not in modules[target[0]]:
            unknown.append(name)
            continue
        targets.add(f"{target[0]}.{target[1]}")
        if name.endswith(DOWN_SUFFIXES) and entry["shape"]:
            rank = max(rank, int(entry["shape"][0]))
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5])
        raise InvalidLoraError(
            f"{len(unknown)} tensor(s) target no module of the base model's UNet or text encoder: {shown}"
        )
    if rank > limits.max_rank:
        raise InvalidLoraError(f"LoRA rank {rank} exceeds the limit of {limits.max_rank}")
    return LoraSummary(tensors=len(header), rank=rank, targets=frozenset(targets))


def dry_run_load(pipe: StableDiffusionPipeline, data: bytes) -> None:
    """Load the LoRA onto the base model under a scratch adapter name, then remove it."""
    from safetensors.torch import load as load_safetensors  # torch, imported where a LoRA is loaded

    try:
        pipe.load_lora_weights(load_safetensors(data), adapter_name=DRY_RUN_ADAPTER)
    finally:
        if DRY_RUN_ADAPTER in pipe.get_list_adapters().get("unet", []) + pipe.get_list_adapters().get(
            "text_encoder", []
        ):
            pipe.delete_adapters(DRY_RUN_ADAPTER)


def validate_lora(
    pipe: StableDiffusionPipeline,
    data: bytes,
    limits: LoraLimits = LoraLimits(),
    dry_run: Callable[[bytes], None] | None = None,
) -> LoraSummary:
    """Inspect, then load once: ``dry_run`` (a ``StyleAdapters.dry_run``, hot-swap aware) or ``dry_run_load``."""
    summary = inspect_lora(data, base_modules(pipe), limits)
    try:
        (dry_run or functools.partial(dry_run_load, pipe))(data)
    except Exception as error:  # noqa: BLE001 — diffusers/peft raise many types for a LoRA that does not fit
        raise InvalidLoraError(f"the LoRA does not load onto the base model: {error}") from None
    return summary

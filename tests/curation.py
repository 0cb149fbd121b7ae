"""What the admin tests share: the admin token header, a manifest, and a publish through the admin API."""

from __future__ import annotations

import httpx
import yaml
from conftest import ADMIN_TOKEN

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def manifest_yaml(style_id: str = "snow-globe", **fields) -> bytes:
    body = {"id": style_id, "title": "Snow globe", "prompt_template": "portrait of {subject} in a snow globe", **fields}
    return yaml.safe_dump(body).encode()


def publish(url: str, manifest: bytes, lora: bytes, headers=AUTH, lora_name: str = "lora.safetensors",
            timeout: float = 120) -> httpx.Response:
    files = {"manifest": ("style.yaml", manifest), "lora": (lora_name, lora)}
    return httpx.post(f"{url}/admin/styles", files=files, headers=headers, timeout=timeout)

"""What ``densenets serve`` was asked for, checked before anything is loaded."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from ..errors import ConfigError

API_KEY_ENV = "DENSENETS_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    source: str
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    calibration: str | None = None
    device: str = "cpu"
    workers: int = 1  # uvicorn worker processes, each with the model and its own batcher
    max_batch: int = 16
    max_wait_ms: float = 10.0
    batch_wait: str = "adaptive"  # adaptive: wait only while more images are on their way; window: always
    max_queue: int = 256  # images waiting for the worker; beyond it, 503 with Retry-After
    max_body_mb: float = 20.0
    max_files: int = 16
    max_pixels: int = 40_000_000  # decompression bombs: refused from the header
    max_top_k: int = 100
    api_key: str | None = None
    no_auth: bool = False
    cors_origins: tuple[str, ...] = ()

    def checked(self) -> ServeConfig:
        """This config with the API key resolved (flag, then environment); raises on a bad combination."""
        for name in ("workers", "max_batch", "max_queue", "max_files", "max_pixels", "max_top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_wait_ms < 0 or self.max_body_mb <= 0:
            raise ConfigError("--max-wait-ms must be >= 0 and --max-body-mb > 0")
        key = self.api_key or os.environ.get(API_KEY_ENV) or None
        if self.no_auth and self.api_key:
            raise ConfigError("--api-key and --no-auth contradict each other; pass one")
        if self.no_auth:
            key = None
        elif key is None and not is_loopback(self.host):
            raise ConfigError(
                f"--host {self.host} is reachable from other machines: pass --api-key (or set {API_KEY_ENV}), "
                "or --no-auth to serve without one"
            )
        return ServeConfig(**{**self.__dict__, "api_key": key})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False

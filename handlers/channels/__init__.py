"""The provider registry: one line per provider (see handlers/channels/base.py)."""

from __future__ import annotations

from handlers.channels.base import ChannelAdapter, PayloadError
from handlers.channels.generic import GenericAdapter

REGISTRY: dict[str, ChannelAdapter] = {
    "generic": GenericAdapter(),
}


def adapter_for(provider: str) -> ChannelAdapter:
    try:
        return REGISTRY[provider]
    except KeyError:
        raise PayloadError(f"unknown provider {provider!r}; known: {sorted(REGISTRY)}") from None

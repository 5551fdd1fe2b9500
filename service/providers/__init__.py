"""Chat providers. Adding one means one module and one line in `adapter_for` below."""

from __future__ import annotations

import httpx2

from service.config import Settings
from service.providers.base import ProviderAdapter
from service.providers.telegram import TelegramProvider
from service.providers.twilio import TwilioProvider
from service.providers.whatsapp import WhatsAppProvider

PROVIDERS = ("telegram", "whatsapp", "twilio")


class UnknownProvider(ValueError):
    """No adapter by that name."""


def adapter_for(name: str, settings: Settings, http: httpx2.AsyncClient) -> ProviderAdapter:
    """The adapter for `name`, built on the process's HTTP client and configured base URL."""
    if name == "telegram":
        return TelegramProvider(settings.telegram_api_url, http)
    if name == "whatsapp":
        return WhatsAppProvider(settings.whatsapp_graph_url, http)
    if name == "twilio":
        return TwilioProvider(settings.twilio_api_url, http, settings.base_url)
    raise UnknownProvider(f"unknown provider {name!r}; supported: {', '.join(PROVIDERS)}")

"""The outgoing webhook moved to core/notices/webhook.py; these names stay for existing callers."""

from __future__ import annotations

from core.notices.webhook import WebhookNotifier, cloudevent, payload, signature

__all__ = ["WebhookNotifier", "cloudevent", "payload", "signature"]

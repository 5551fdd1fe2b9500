"""Pipedrive: what we receive from it (webhooks) and, later, how we call it."""

"""Pipedrive: OAuth, the rate-limited API client, and its webhook events."""

"""pdbridge: bridges chat providers into Pipedrive's Messaging App Extension."""

__version__ = "0.1.0"

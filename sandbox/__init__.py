"""A local Pipedrive and chat provider on one machine: the emulators the tests run against, and
``pdbridge sandbox``, which wires them to a running service so a newcomer can watch a message
travel in a browser. Never imported by service/, handlers/ or jobs/ (see
tests/test_sandbox_boundary.py)."""

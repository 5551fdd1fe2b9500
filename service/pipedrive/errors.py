"""What can go wrong when calling Pipedrive, as one tree (drawn here, httpx-style).

    PipedriveError
    ├── PipedriveTransient (TransientError: another try may pass)
    │   ├── RateLimited             burst 429; `retry_after` is the announced reset
    │   ├── ServerError             5xx, maintenance
    │   └── BudgetParked (Parked)   daily budget spent or Cloudflare block: the installation's
    │       ├── DailyBudgetExhausted    work waits for a probe instead of spending tries
    │       └── CloudflareBlocked       (HTML 403 after ignored 429s)
    └── PipedrivePermanent (PermanentError: retrying cannot help)
        ├── AuthRevoked             401 after a refresh, or invalid_grant: needs_reauth
        ├── InstallationInactive    uninstalled or needs_reauth already; nothing is sent
        ├── ScopeMissing            403 "Scope and URL mismatch"
        ├── Forbidden               other 403 (permissions, plan limits: `code`)
        ├── AccountNotOpen          402
        ├── NotFound                404 / 410
        └── InvalidPayload          400 / 422 (and other 4xx): the body names the problem

`OAuthError` covers the token endpoint (`invalid_grant`, `invalid_client`, outages).
"""

from __future__ import annotations

from service.errors import Parked, PdbridgeError, PermanentError, TransientError


class PipedriveError(PdbridgeError):
    """Any failed Pipedrive call; `status` and `code` come from the response when there was one."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class PipedriveTransient(PipedriveError, TransientError):
    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        PipedriveError.__init__(self, message, status=status, code=code)
        self.retry_after = retry_after


class RateLimited(PipedriveTransient):
    """Burst limit: wait for the announced reset."""


class ServerError(PipedriveTransient):
    """Pipedrive failed (5xx); retry with backoff."""


class BudgetParked(PipedriveTransient, Parked):
    """The installation's work waits until a probe shows Pipedrive accepts requests again."""


class DailyBudgetExhausted(BudgetParked):
    """The company's daily token budget is spent; it resets at an unknown server midnight."""


class CloudflareBlocked(BudgetParked):
    """Pipedrive's edge answered an HTML 403: stop all traffic for this token for a while."""


class PipedrivePermanent(PipedriveError, PermanentError):
    pass


class AuthRevoked(PipedrivePermanent):
    """The token is no longer accepted; the user must reinstall the app."""


class InstallationInactive(PipedrivePermanent):
    """The installation is uninstalled or awaits re-authorization; no call was made."""


class ScopeMissing(PipedrivePermanent):
    """The app was not granted the scope this endpoint needs."""


class Forbidden(PipedrivePermanent):
    """Permission or plan limit (`code` says which, e.g. `feature_capping_*`)."""


class AccountNotOpen(PipedrivePermanent):
    """The company's account is not open (trial ended, unpaid)."""


class NotFound(PipedrivePermanent):
    """The object does not exist (or was purged)."""


class InvalidPayload(PipedrivePermanent):
    """Pipedrive refused what we sent; the message carries its reason."""


class OAuthError(PipedriveError):
    """The OAuth server refused or failed a token request."""


class InvalidGrant(OAuthError, PermanentError):
    """The code or refresh token is invalid, expired or already used."""


class InvalidClient(OAuthError, PermanentError):
    """Our client id or secret is wrong: a configuration error, alert an operator."""


class OAuthUnavailable(OAuthError, TransientError):
    """The OAuth server failed (5xx or transport); try again later."""

"""What the layers learn about a request while serving it, in one typed place.

The outermost middleware opens a `RequestContext` per request; dependencies and the limiter
fill it in (who the caller is, why authentication failed, which rate-limit policies counted
the request), and the middleware reads it back for the access log, the metrics and the
`RateLimit` headers. Log records find the request id through it too.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestContext:
    request_id: str
    user: str | None = None
    auth_failure: str | None = None
    # One (`RateLimit-Policy` item, `RateLimit` item) per policy that counted the request,
    # in the order they counted it.
    ratelimit_fields: list[tuple[str, str]] = field(default_factory=list)
    # Policy name -> the identity each policy counted, for a route that refunds a count.
    counted: dict[str, str] = field(default_factory=dict)


_current: ContextVar[RequestContext | None] = ContextVar("request_context", default=None)


def open_context(request_id: str) -> tuple[RequestContext, Token[RequestContext | None]]:
    context = RequestContext(request_id)
    return context, _current.set(context)


def close_context(token: Token[RequestContext | None]) -> None:
    _current.reset(token)


def current_context() -> RequestContext | None:
    """The context of the request being served, or None outside a request."""
    return _current.get()


def request_context() -> RequestContext:
    """The context of the request being served; only code running inside one calls this."""
    context = _current.get()
    if context is None:
        raise LookupError("no request is being served (ObservabilityMiddleware opens one)")
    return context

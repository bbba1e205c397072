"""The ``http`` step kind: one HTTP request through httpx, under the plan URI policy.

The URL passes ``UriPolicy`` (dvt_engine.planning.uri_policy) exactly as a plan URI does: its
origin must be on the allowlist (``DVT_STEPS_HTTP_ALLOWED_HOSTS``), plain http only when the entry
names the http origin, and a loopback, private, link-local or metadata address only when the
host is named exactly. The request then goes to an address the policy approved (the Host header
and TLS server name stay the URL's host), so DNS cannot answer differently between the check and
the connect. Redirects are not followed and proxies from the environment are not used.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any, ClassVar

from dvt_engine.errors import (
    HttpRequestFailed,
    HttpResponseTooLarge,
    HttpStatus,
    HttpUriNotAllowed,
    PlanFetchFailed,
    PlanUriNotAllowed,
    StepTimeout,
)
from dvt_engine.planning.uri_policy import CheckedUri, UriPolicy
from dvt_engine.ports import StepContext, StepHandler, StepResult
from dvt_engine.secrets import redact
from dvt_steps.common import SECRET_REF_SCHEMA, Secrets, check_params, mask_bytes, require
from dvt_steps.settings import HttpStepSettings

KIND = "http"
EXTRA = "steps-http"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: Response headers worth recording; the rest stay out of the output (cookies, for one).
RECORDED_HEADERS = ("content-type", "content-length", "etag", "last-modified", "location",
                    "retry-after")
ERROR_BODY_CHARS = 300
CHUNK_BYTES = 64 * 1024
_HEADER_VALUE = "^[^\r\n\u0000]*$"
_STATUS: dict[str, Any] = {"type": "integer", "minimum": 100, "maximum": 599}

PARAMS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "http step params",
    "type": "object",
    "properties": {
        "method": {"enum": list(METHODS)},
        "url": {"type": "string", "minLength": 1, "maxLength": 2048},
        "headers": {
            "type": "object",
            "propertyNames": {"pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$"},
            "additionalProperties": {
                "oneOf": [{"type": "string", "pattern": _HEADER_VALUE}, SECRET_REF_SCHEMA],
            },
        },
        "json": {},
        "body": {"type": "string"},
        "timeoutS": {"type": "number", "exclusiveMinimum": 0, "maximum": 3600},
        "expectStatus": {"oneOf": [_STATUS, {"type": "array", "items": _STATUS,
                                            "minItems": 1, "uniqueItems": True}]},
    },
    "required": ["url"],
    "not": {"required": ["json", "body"]},
    "additionalProperties": False,
}


class HttpStepHandler(StepHandler):
    """Sends ``params`` as one request; the response's status, headers and body are the output."""

    kind: ClassVar[str] = KIND
    params_schema: ClassVar[dict[str, Any]] = PARAMS_SCHEMA

    def __init__(self, settings: HttpStepSettings | None = None, *,
                 policy: UriPolicy | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self.policy = policy
        self.ssl_context = ssl_context

    async def run(self, ctx: StepContext) -> StepResult:
        """Check the URL, send the request within timeoutS, record the response."""
        settings = self.settings or HttpStepSettings()
        params = ctx.params
        check_params(KIND, PARAMS_SCHEMA, params)
        httpx = require("httpx", EXTRA)
        url = str(params["url"])
        checked = await _checked(self.policy or UriPolicy(settings.allowed_hosts,
                                                          allow_registry=False), url)
        secrets = Secrets(ctx)
        headers = {str(k): str(await secrets.value(v))
                   for k, v in (params.get("headers") or {}).items()}
        content: bytes | None = None
        if "json" in params:
            body_value = await secrets.deep(params["json"])
            content = json.dumps(body_value, ensure_ascii=False).encode("utf-8")
            headers.setdefault("Content-Type", "application/json")
        elif "body" in params:
            content = str(params["body"]).encode("utf-8")
        method = str(params.get("method", "GET"))
        timeout_s = float(params.get("timeoutS", settings.default_timeout_s))
        verify: ssl.SSLContext | bool = self.ssl_context or (
            ssl.create_default_context(cafile=settings.ca_file) if settings.ca_file else True)
        exchange = _Exchange(httpx, checked, method, headers, content, settings, verify)
        try:
            async with asyncio.timeout(timeout_s):
                status, got_headers, body = await exchange.send(timeout_s)
        except TimeoutError:
            raise StepTimeout(f"{method} {_shown(url)} took longer than its timeoutS of "
                              f"{timeout_s:g} s", details={"timeoutS": timeout_s}) from None
        masked = mask_bytes(body, secrets.values)
        _check_status(method, url, status, params.get("expectStatus"), masked)
        output: dict[str, Any] = {"status": status, "headers": got_headers}
        artifacts = []
        if body:
            inline = _inline(masked, got_headers.get("content-type", ""),
                             settings.max_inline_bytes)
            if inline is not None:
                output.update(redact(inline, secrets.values))
            else:
                media = got_headers.get("content-type") or "application/octet-stream"
                ref = await ctx.artifacts.put(masked, kind="http.response",
                                              media_type=media.split(";")[0].strip()[:200])
                artifacts.append(ref)
                output["body"] = {"uri": ref.uri, "sizeBytes": ref.size_bytes,
                                  "mediaType": ref.media_type}
        return StepResult(output=output, artifacts=artifacts)


async def _checked(policy: UriPolicy, url: str) -> CheckedUri:
    try:
        checked = await policy.check(url)
    except PlanUriNotAllowed as exc:
        reason = str(exc.details.get("reason") or exc.message)
        raise HttpUriNotAllowed(f"{reason}: {_shown(url)}",
                                details={"url": _shown(url), "reason": reason}) from None
    except PlanFetchFailed as exc:
        raise HttpRequestFailed(exc.message, details={"url": _shown(url)}) from None
    if checked.scheme not in ("http", "https"):
        raise HttpUriNotAllowed(f"only http(s) URLs can be requested: {_shown(url)}",
                                details={"url": _shown(url), "reason": "scheme"})
    return checked


class _Exchange:
    """One request to the approved addresses in turn, the body read up to the size limit."""

    def __init__(self, httpx: Any, checked: CheckedUri, method: str, headers: dict[str, str],
                 content: bytes | None, settings: HttpStepSettings,
                 verify: ssl.SSLContext | bool) -> None:
        self.httpx = httpx
        self.verify = verify
        self.checked = checked
        self.method = method
        self.headers = headers
        self.content = content
        self.settings = settings

    async def send(self, timeout_s: float) -> tuple[int, dict[str, str], bytes]:
        """Status, recorded headers and body of the response from the first address that answers."""
        httpx = self.httpx
        checked = self.checked
        default_port = 443 if checked.scheme == "https" else 80
        host_header = checked.host if ":" not in checked.host else f"[{checked.host}]"
        if checked.port != default_port:
            host_header += f":{checked.port}"
        # The Host header names the URL's host, whatever the params say: it is what was checked.
        headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        headers["Host"] = host_header
        last: Exception | None = None
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, verify=self.verify,
                                     timeout=httpx.Timeout(timeout_s)) as client:
            for address in checked.addresses:
                url = httpx.URL(checked.uri).copy_with(host=address)
                extensions = {"sni_hostname": checked.host} if checked.scheme == "https" else {}
                request = client.build_request(self.method, url, headers=headers,
                                               content=self.content, extensions=extensions)
                try:
                    return await self._exchange(client, request)
                except httpx.ConnectError as exc:
                    if _untrusted(exc):
                        raise HttpRequestFailed(
                            f"TLS certificate of {checked.host} is not trusted",
                            details={"url": _shown(checked.uri)}, retryable=False) from None
                    last = exc  # try the next approved address
                except httpx.TimeoutException:
                    raise TimeoutError from None
                except httpx.HTTPError as exc:
                    raise self._failed(exc) from None
        raise self._failed(last)

    async def _exchange(self, client: Any, request: Any) -> tuple[int, dict[str, str], bytes]:
        limit = self.settings.max_response_bytes
        response = await client.send(request, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise self._too_large(limit)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes(CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise self._too_large(limit)
                chunks.append(chunk)
        finally:
            await response.aclose()
        recorded = {name: response.headers[name] for name in RECORDED_HEADERS
                    if name in response.headers}
        return response.status_code, recorded, b"".join(chunks)

    def _too_large(self, limit: int) -> HttpResponseTooLarge:
        return HttpResponseTooLarge(
            f"response from {_shown(self.checked.uri)} is larger than {limit} bytes",
            details={"limitBytes": limit}, retryable=False)

    def _failed(self, exc: Exception | None) -> HttpRequestFailed:
        why = (str(exc) or type(exc).__name__) if exc is not None else "no address answered"
        return HttpRequestFailed(f"{self.method} {_shown(self.checked.uri)} failed: {why}",
                                 details={"url": _shown(self.checked.uri)})


def _untrusted(exc: BaseException) -> bool:
    """True when a connect error was a certificate the worker does not trust."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _check_status(method: str, url: str, status: int, expect: Any, body: bytes) -> None:
    expected = [expect] if isinstance(expect, int) else expect
    if (expected is None and 200 <= status < 300) or (expected is not None
                                                      and status in expected):
        return
    wanted = "2xx" if expected is None else ", ".join(str(s) for s in expected)
    snippet = body[:ERROR_BODY_CHARS].decode("utf-8", "replace").strip()
    raise HttpStatus(
        f"{method} {_shown(url)} answered HTTP {status} (expected {wanted})"
        + (f": {snippet}" if snippet else ""),
        details={"status": status}, retryable=status == 429 or status >= 500)


def _inline(body: bytes, content_type: str, limit: int) -> dict[str, Any] | None:
    """``{"json": ...}`` or ``{"text": ...}`` for a small readable body, else None."""
    if len(body) > limit:
        return None
    media = content_type.split(";")[0].strip().lower()
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if media == "application/json" or media.endswith("+json"):
        try:
            return {"json": json.loads(text, parse_constant=_no_constant)}
        except ValueError:
            return {"text": text}
    if media.startswith("text/") or media in ("application/xml", "application/x-ndjson"):
        return {"text": text}
    return None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # NaN and Infinity: keep such a body as text


def _shown(url: str) -> str:
    return url if len(url) <= 200 else url[:200] + "..."

"""MCP tool calls through the official `mcp` SDK's own client transports, as an MCP app's users make them.

Usage: mcp_calls.py BASE_URL TRANSPORT SESSIONS CALLS DELAY_MS TIMEOUT_S

TRANSPORT is `sse` (legacy HTTP+SSE at BASE_URL/sse), `streamable` (stateful Streamable HTTP at
BASE_URL/mcp, initialize handshake, `Mcp-Session-Id`) or `modern` (the 2026-07-28 stateless
protocol at BASE_URL/mcp-modern: `server/discover` instead of initialize, no session).

Opens SESSIONS concurrent client sessions and initialises each, prints `ready` once every one has
finished its initial connect (an initial connect that failed counts as finished; the JSON says
so), then makes CALLS sequential `slow_echo(text=f"s{session}-c{i}", delay_ms=DELAY_MS)` calls in
each session, every call bounded by TIMEOUT_S, and prints one JSON object:

  {"calls": [{"session", "call", "outcome": "answered"|"error"|"hung", "error", "pod", "ms"}],
   "sessions": [{"session", "initialized", "init_error", "reinits", "reinit_failures",
                 "session_ids", "pods"}]}

A failed call never stops the rest. When the failure means the session is gone (connection
closed, HTTP 404 "Session not found"/"Session terminated", the transport crashed), the client does
what MCP clients do: it opens and initialises a new session (counted in `reinits`) and goes on with
the next call; a re-initialise that fails costs the call it was for (recorded as "error"), then
the client backs off min(1 s, TIMEOUT_S) before the next. A call with no answer within TIMEOUT_S
is "hung". Every step is time-bounded and the exit status is 0 whatever the calls' outcomes.

Note (SDK behaviour, sse): a message POST that fails (e.g. 404: the session is not on the server
the proxy picked) does not fail the call; the SDK's writer stops and the call hangs until the read
timeout. Such a call is reported "hung" with the HTTP status in `error`, and the session re-opened.
"""

import json
import logging
import math
import os
import sys
import time
from contextlib import AsyncExitStack

import anyio
import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

PATHS = {"sse": "/sse", "streamable": "/mcp", "modern": "/mcp-modern"}


def describe(exc: BaseException) -> str:
    """One line for an exception; exception groups (anyio task groups) are unwrapped."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    if isinstance(exc, MCPError):
        return f"MCPError {exc.code}: {exc.message}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Conn:
    """What one connection (one MCP session) saw on the HTTP layer."""

    def __init__(self) -> None:
        self.http_errors: list[str] = []  # non-2xx answers while the current call ran
        self.session_id: str | None = None
        self.inflight: tuple[int, float] | None = None  # (call index, start) of the call under way

    async def on_response(self, response: httpx2.Response) -> None:
        sid = response.headers.get("mcp-session-id")
        if sid:
            self.session_id = sid
        if response.status_code >= 400:
            req = response.request
            self.http_errors.append(f"HTTP {response.status_code} on {req.method} {req.url.path}")


class Runner:
    def __init__(self, base_url: str, transport: str, sessions: int, calls: int, delay_ms: int, timeout: float):
        self.url = base_url.rstrip("/") + PATHS[transport]
        self.transport = transport
        self.n_sessions = sessions
        self.n_calls = calls
        self.delay_ms = delay_ms
        self.timeout = timeout
        # Extra time past TIMEOUT_S for the hard cap around a call (the SDK's own read timeout,
        # TIMEOUT_S, normally fires first) and for tearing a connection down.
        self.grace = 2.0
        self.exit_grace = max(1.0, min(5.0, timeout))
        self.backoff = min(1.0, timeout)  # after a failed re-initialize
        self.calls: list[list[dict | None]] = [[None] * calls for _ in range(sessions)]
        self.sessions = [
            {
                "session": s,
                "initialized": False,
                "init_error": None,
                "reinits": 0,
                "reinit_failures": 0,
                "session_ids": [],
                "pods": [],
            }
            for s in range(sessions)
        ]
        self.n_ready = 0
        self.ready_printed = False
        self.go = anyio.Event()

    def mark_ready(self) -> None:
        self.n_ready += 1
        if self.n_ready == self.n_sessions:
            print("ready", flush=True)
            self.ready_printed = True
            self.go.set()

    async def open_client(self, stack: AsyncExitStack, conn: Conn) -> Client:
        """Open the transport and run the SDK's connect: initialize (sse, streamable) or discover (modern)."""
        hooks = {"response": [conn.on_response]}
        if self.transport == "sse":

            def factory(headers=None, timeout=None, auth=None) -> httpx2.AsyncClient:
                return httpx2.AsyncClient(headers=headers, timeout=timeout, auth=auth, event_hooks=hooks)

            def on_session(sid: str) -> None:
                conn.session_id = sid

            transport = sse_client(
                self.url,
                timeout=self.timeout,  # the message POSTs
                sse_read_timeout=300.0,  # the GET stream: idle between calls, pinged every 15 s
                httpx_client_factory=factory,
                on_session_created=on_session,
            )
            mode = "legacy"
        else:
            http = httpx2.AsyncClient(timeout=httpx2.Timeout(self.timeout, read=300.0), event_hooks=hooks)
            await stack.enter_async_context(http)
            transport = streamable_http_client(self.url, http_client=http)
            # `streamable` pins the initialize handshake: the SDK's default mode="auto" probes
            # server/discover first, and a 2.x server answers it on /mcp, so the client would
            # silently go stateless (no Mcp-Session-Id) instead.
            mode = "legacy" if self.transport == "streamable" else "auto"
        client = Client(transport, mode=mode, read_timeout_seconds=self.timeout, cache=None)
        await stack.enter_async_context(client)
        if self.transport == "modern" and client.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            raise RuntimeError(f"server negotiated {client.protocol_version}, not a 2026-07-28 era version")
        return client

    def session_gone(self, exc: MCPError, conn: Conn) -> bool:
        if exc.code == CONNECTION_CLOSED:
            return True
        if exc.message in ("Session not found", "Session terminated"):
            return True
        return any(e.startswith("HTTP 404 ") for e in conn.http_errors)

    async def one_call(self, client: Client, conn: Conn, s: int, i: int) -> bool:
        """Make call i of session s and record it; True when the session is gone."""
        text = f"s{s}-c{i}"
        t0 = time.monotonic()
        conn.http_errors.clear()
        conn.inflight = (i, t0)
        outcome, error, pod, gone = "error", None, None, False
        try:
            with anyio.fail_after(self.timeout + self.grace):
                result = await client.call_tool(
                    "slow_echo", {"text": text, "delay_ms": self.delay_ms}, read_timeout_seconds=self.timeout
                )
            answer = "".join(getattr(c, "text", "") for c in result.content)
            if result.is_error:
                error = f"tool error: {answer}"
            elif answer.startswith(text + "@"):
                outcome, pod = "answered", answer[len(text) + 1 :]
            else:
                error = f"unexpected answer {answer!r} to {text!r}"
        except TimeoutError:
            outcome, error = "hung", f"no answer within {self.timeout + self.grace}s"
        except MCPError as e:
            if e.code == REQUEST_TIMEOUT:
                outcome, error = "hung", f"no answer within {self.timeout}s ({describe(e)})"
            else:
                error, gone = describe(e), self.session_gone(e, conn)
        except Exception as e:  # noqa: BLE001 - every SDK failure is a result to report
            error, gone = describe(e), True
        if conn.http_errors:
            error = f"{error}; {', '.join(conn.http_errors)}" if error else ", ".join(conn.http_errors)
            if outcome == "hung":
                # The SSE transport answers a failed message POST (e.g. 404: the session is not on
                # this server) by stopping its writer, so the call hangs and the session is dead.
                gone = True
        conn.inflight = None
        self.record(s, i, outcome, error, pod, t0)
        return gone

    def record(self, s: int, i: int, outcome: str, error: str | None, pod: str | None, t0: float) -> None:
        self.calls[s][i] = {
            "session": s,
            "call": i,
            "outcome": outcome,
            "error": error,
            "pod": pod,
            "ms": round((time.monotonic() - t0) * 1000, 1),
        }
        if pod is not None and pod not in self.sessions[s]["pods"]:
            self.sessions[s]["pods"].append(pod)

    async def session(self, s: int) -> None:
        info = self.sessions[s]
        first = True
        i = 0
        while first or i < self.n_calls:
            conn = Conn()
            connected = False
            t_connect = time.monotonic()
            try:
                # One scope around the whole connection: a deadline while connecting, none while
                # in use, a short one again for the teardown (e.g. the streamable DELETE).
                with anyio.CancelScope(deadline=anyio.current_time() + self.timeout) as scope:
                    async with AsyncExitStack() as stack:
                        try:
                            client = await self.open_client(stack, conn)
                            connected = True
                            scope.deadline = math.inf
                            info["session_ids"].append(conn.session_id)
                            if first:
                                first = False
                                info["initialized"] = True
                                self.mark_ready()
                            else:
                                info["reinits"] += 1
                            await self.go.wait()
                            while i < self.n_calls:
                                gone = await self.one_call(client, conn, s, i)
                                i += 1
                                if gone:
                                    break
                        finally:
                            scope.deadline = anyio.current_time() + self.exit_grace
                failure = None
                if scope.cancelled_caught and not connected:
                    failure = f"connect timed out after {self.timeout}s"
                    if conn.http_errors:  # e.g. the SSE transport hangs on a 404'd initialize POST
                        failure += f" ({', '.join(conn.http_errors)})"
            except Exception as e:  # noqa: BLE001 - a transport crash ends this session, not the run
                failure = describe(e)
            if failure is None:
                continue
            if not connected:
                if first:
                    first = False
                    info["init_error"] = failure
                    self.mark_ready()
                    await self.go.wait()
                else:
                    # Re-initialising failed: that costs the call it was for, then try again.
                    info["reinit_failures"] += 1
                    self.record(s, i, "error", f"re-initialize failed: {failure}", None, t_connect)
                    i += 1
                    # Back off before the next attempt, as clients do (a refused connect is instant).
                    if i < self.n_calls:
                        await anyio.sleep(self.backoff)
            elif conn.inflight is not None:
                # The transport died under a call (its task group cancelled us mid-call).
                ci, t0 = conn.inflight
                if self.calls[s][ci] is None:
                    self.record(s, ci, "error", f"transport failed: {failure}", None, t0)
                i = max(i, ci + 1)

    async def run(self) -> None:
        per_call = 2 * self.timeout + self.grace + 2 * self.exit_grace + self.backoff
        budget = self.timeout + self.exit_grace + self.n_calls * per_call + 10
        with anyio.move_on_after(budget):
            async with anyio.create_task_group() as tg:
                for s in range(self.n_sessions):
                    tg.start_soon(self.session, s)

    def report(self) -> dict:
        calls = []
        for s in range(self.n_sessions):
            for i in range(self.n_calls):
                c = self.calls[s][i]
                calls.append(
                    c
                    or {
                        "session": s,
                        "call": i,
                        "outcome": "hung",
                        "error": "not made or not finished before the client-wide deadline",
                        "pod": None,
                        "ms": None,
                    }
                )
        return {"calls": calls, "sessions": self.sessions}


def main() -> None:
    base_url, transport, sessions, calls, delay_ms, timeout = sys.argv[1:7]
    if transport not in PATHS:
        sys.exit(f"TRANSPORT must be one of {', '.join(PATHS)}")
    # The SDK logs transport faults (e.g. a 404'd message POST) with tracebacks; the JSON carries
    # them, so keep stderr quiet unless asked (MCP_CALLS_LOG=WARNING, DEBUG, ...).
    logging.basicConfig(level=os.environ.get("MCP_CALLS_LOG", "CRITICAL").upper())
    runner = Runner(base_url, transport, int(sessions), int(calls), int(delay_ms), float(timeout))
    try:
        anyio.run(runner.run)
    except BaseException as e:  # noqa: BLE001 - still report what was measured
        print(f"mcp_calls: {describe(e)}", file=sys.stderr)
    if not runner.ready_printed:
        print("mcp_calls: never ready", file=sys.stderr)
    print(json.dumps(runner.report()), flush=True)
    # Skip interpreter teardown: nothing may hold the exit (e.g. a resolver thread).
    os._exit(0)


if __name__ == "__main__":
    main()

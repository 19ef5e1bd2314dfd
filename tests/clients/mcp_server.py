"""A real MCP server app built on the official `mcp` SDK (2.x `MCPServer`), as a user deploys it.

Usage: mcp_server.py --host H --port P --pod-name NAME

One ASGI app (run with uvicorn) serving, side by side:
  GET  /sse                          legacy HTTP+SSE transport: the stream opens with an `endpoint`
  POST /messages/?session_id=<hex>   event naming this URL; sessions live in this process's memory
  POST|GET|DELETE /mcp               Streamable HTTP, stateful (`Mcp-Session-Id`), sessions in memory;
                                     the SDK also routes 2026-07-28 requests arriving here (by their
                                     `MCP-Protocol-Version` header) to its stateless "modern" handler
  POST /mcp-modern                   the 2026-07-28 ("modern") stateless transport only: no
                                     initialize, no session; a handshake-era request gets 400
  GET  /healthz                      200 "ok"

Tools: `echo(text)` and `slow_echo(text, delay_ms)`; each answers f"{text}@{pod name}" so a
test can see which pod answered. SIGTERM: uvicorn's graceful shutdown, 5 s grace.
Host/Origin (DNS-rebinding) checks are off: requests arrive through proxies with any Host.
"""

import argparse
import json
import logging

import anyio
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send


def build_app(pod_name: str) -> Starlette:
    mcp = MCPServer("ssekeeper-test-mcp", log_level="WARNING")

    @mcp.tool()
    async def echo(text: str) -> str:
        """Answer the text, tagged with the pod that answered."""
        return f"{text}@{pod_name}"

    @mcp.tool()
    async def slow_echo(text: str, delay_ms: int) -> str:
        """Sleep delay_ms, then answer the text tagged with the pod that answered."""
        await anyio.sleep(max(delay_ms, 0) / 1000)
        return f"{text}@{pod_name}"

    # The SDK turns DNS-rebinding protection on by itself when bound to a loopback host (and its
    # TransportSecurityMiddleware is off otherwise); pass explicit settings so it is off on every
    # bind address, whatever Host/Origin the proxy in front forwards.
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)

    sse_app = mcp.sse_app(sse_path="/sse", message_path="/messages/", transport_security=security)
    http_app = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=False,
        json_response=False,
        transport_security=security,
    )
    # Built by streamable_http_app(); shared by /mcp and /mcp-modern (one manager per app).
    manager = mcp.session_manager
    shttp = StreamableHTTPASGIApp(manager)

    class ModernOnly:
        """ASGI app for /mcp-modern (a class instance, so Starlette's Route passes every method on).

        The session manager dispatches on MCP-Protocol-Version: a modern revision goes to the
        SDK's stateless single-exchange handler, anything else to the handshake-era transport.
        This path admits only the former.
        """

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            version = Request(scope).headers.get("mcp-protocol-version")
            if version in MODERN_PROTOCOL_VERSIONS:
                await shttp(scope, receive, send)
                return
            body = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {
                    "code": -32600,
                    "message": f"/mcp-modern serves only MCP {', '.join(MODERN_PROTOCOL_VERSIONS)} "
                    "(MCP-Protocol-Version header); use /mcp or /sse for handshake-era sessions",
                },
            }
            response = Response(json.dumps(body), status_code=400, media_type="application/json")
            await response(scope, receive, send)

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [
        Route("/healthz", endpoint=healthz, methods=["GET"]),
        *sse_app.routes,  # GET /sse, Mount /messages/
        *http_app.routes,  # /mcp
        Route("/mcp-modern", endpoint=ModernOnly()),
    ]
    return Starlette(routes=routes, lifespan=lambda _app: manager.run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--pod-name", default="local")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    uvicorn.run(
        build_app(args.pod_name),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()

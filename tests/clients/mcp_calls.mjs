// MCP tool calls through the official TypeScript SDK's (@modelcontextprotocol/sdk) own client
// transports, as an MCP app's users make them. The twin of mcp_calls.py: same CLI, same stdout.
//
// Usage: node mcp_calls.mjs BASE_URL TRANSPORT SESSIONS CALLS DELAY_MS TIMEOUT_S
//
// TRANSPORT is `sse` (legacy HTTP+SSE at BASE_URL/sse, SSEClientTransport) or `streamable`
// (stateful Streamable HTTP at BASE_URL/mcp, StreamableHTTPClientTransport, initialize handshake,
// `Mcp-Session-Id`). The TypeScript SDK has no client for the 2026-07-28 stateless protocol, so
// mcp_calls.py's `modern` is not offered here.
//
// Opens SESSIONS concurrent client sessions and initialises each (Client.connect), prints `ready`
// once every one has finished its initial connect (an initial connect that failed counts as
// finished; the JSON says so), then makes CALLS sequential
// `slow_echo({text: "s{session}-c{i}", delay_ms: DELAY_MS})` calls in each session, every call
// bounded by TIMEOUT_S (the SDK's request `timeout`, plus a hard outer bound), and prints one JSON
// object on one line:
//
//   {"calls": [{"session", "call", "outcome": "answered"|"error"|"hung", "error", "pod", "ms"}],
//    "sessions": [{"session", "initialized", "init_error", "reinits", "reinit_failures",
//                  "session_ids", "pods"}]}
//
// A failed call never stops the rest. When the failure means the session is gone (connection
// closed, HTTP 404 "Session not found"/"Session terminated", a transport error), the client does
// what MCP clients do: it closes the client and its transport, opens and initialises a new session
// (counted in `reinits`) and goes on with the next call; a re-initialise that fails costs the call
// it was for (recorded as "error"), then the client backs off min(1 s, TIMEOUT_S) before the next.
// A call with no answer within TIMEOUT_S is "hung". Every step is time-bounded and the exit status
// is 0 whatever the calls' outcomes (a wrong command line exits 1).
//
// Notes (SDK behaviour, sse): SSEClientTransport reads the GET stream with the `eventsource`
// package, which reconnects by itself whenever the stream ends or breaks (after 3 s, or the
// server's `retry:`), sending Last-Event-ID only if an event carried an id (the Python server's
// carry none). A legacy SSE server answers that GET with a NEW session and a new `endpoint` event,
// and the transport silently posts there from then on, without initialize. The transport only
// reports the loss through onerror (it never closes), so a call under way when the stream broke
// gets no answer ("hung" at TIMEOUT_S), and a call made after it is answered by the new,
// uninitialised session (the Python server: -32602 "Invalid request parameters"). Either way the
// transport error seen since connect marks the session gone and this client re-initialises.
// A message POST that fails (e.g. 404: the session is not on the server the proxy picked) fails
// the call at once (unlike the Python SDK, where it hangs).

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ErrorCode, McpError } from '@modelcontextprotocol/sdk/types.js';

const PATHS = { sse: '/sse', streamable: '/mcp' };
const LOG = (process.env.MCP_CALLS_LOG ?? 'CRITICAL').toUpperCase();
const VERBOSE = ['DEBUG', 'INFO', 'WARNING', 'WARN', 'ERROR'].includes(LOG);

function log(...args) {
  if (VERBOSE) console.error('mcp_calls:', ...args);
}

/** One line for an error; causes (fetch's "fetch failed" -> ECONNREFUSED) and aggregates unwrapped. */
function describe(err) {
  if (err instanceof AggregateError && err.errors?.length) {
    return err.errors.map(describe).join('; ');
  }
  if (err instanceof McpError) {
    const msg = String(err.message).replace(/^MCP error -?\d+: /, '');
    return `MCPError ${err.code}: ${oneLine(msg)}`;
  }
  if (!(err instanceof Error)) return oneLine(String(err));
  const text = oneLine(err.message ?? '');
  // SDK errors (SseError, StreamableHTTPError) keep the name `Error`: use the class's.
  const name = err.name && err.name !== 'Error' ? err.name : err.constructor?.name || 'Error';
  let line = text ? `${name}: ${text}` : name;
  if (err.cause !== undefined && err.cause !== null) line += ` (cause: ${describe(err.cause)})`;
  return line;
}

function oneLine(s) {
  return String(s).split(/\s+/).filter(Boolean).join(' ');
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class TimeoutErr extends Error {
  constructor(what) {
    super(what);
    this.name = 'TimeoutError';
  }
}

/** `promise`, or a TimeoutErr after `ms` (the timer never holds the process). */
function bounded(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new TimeoutErr(what)), ms);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

/** What one connection (one MCP session) saw on the HTTP layer and from the transport. */
class Conn {
  constructor() {
    this.httpErrors = []; // non-2xx answers while the current call ran
    this.faults = []; // transport errors (onerror) not yet reported with a call
    this.faulted = false; // a transport error since the connect finished
    this.connected = false;
    this.sessionId = null;
    this.inflight = null;
  }
}

class Runner {
  constructor(baseUrl, transport, sessions, calls, delayMs, timeout) {
    this.url = new URL(baseUrl.replace(/\/+$/, '') + PATHS[transport]);
    this.transport = transport;
    this.nSessions = sessions;
    this.nCalls = calls;
    this.delayMs = delayMs;
    this.timeoutMs = timeout * 1000;
    // Extra time past TIMEOUT_S for the hard cap around a call (the SDK's own request timeout,
    // TIMEOUT_S, normally fires first) and for tearing a connection down.
    this.graceMs = 2000;
    this.exitGraceMs = Math.max(1000, Math.min(5000, this.timeoutMs));
    this.backoffMs = Math.min(1000, this.timeoutMs); // after a failed re-initialize
    this.calls = Array.from({ length: sessions }, () => new Array(calls).fill(null));
    this.sessions = Array.from({ length: sessions }, (_, s) => ({
      session: s,
      initialized: false,
      init_error: null,
      reinits: 0,
      reinit_failures: 0,
      session_ids: [],
      pods: [],
    }));
    this.nReady = 0;
    this.readyPrinted = false;
    this.go = new Promise((resolve) => {
      this.release = resolve;
    });
  }

  markReady() {
    this.nReady += 1;
    if (this.nReady === this.nSessions) {
      process.stdout.write('ready\n');
      this.readyPrinted = true;
      this.release();
    }
  }

  /** A fetch for the transport: records HTTP errors and the session id, bounds the wait for headers. */
  fetchFor(conn) {
    const timeoutMs = this.timeoutMs;
    return async (url, init = {}) => {
      const method = (init.method ?? 'GET').toUpperCase();
      const u = new URL(url instanceof Request ? url.url : String(url));
      // Like an HTTP client's connect/write timeouts: the answer's headers must come within
      // TIMEOUT_S; a streamed body (SSE) may then stay open.
      const headersDeadline = new AbortController();
      const timer = setTimeout(
        () => headersDeadline.abort(new TimeoutErr(`no HTTP answer within ${timeoutMs / 1000}s`)),
        timeoutMs,
      );
      const signal = init.signal ? AbortSignal.any([init.signal, headersDeadline.signal]) : headersDeadline.signal;
      let response;
      try {
        response = await fetch(url, { ...init, signal });
      } finally {
        clearTimeout(timer);
      }
      const sid = response.headers.get('mcp-session-id');
      if (sid) conn.sessionId = sid;
      if (method === 'POST' && u.searchParams.get('session_id')) {
        // Legacy SSE: the session is named by the endpoint URL's query (`?session_id=`).
        conn.sessionId = u.searchParams.get('session_id');
      }
      if (response.status >= 400) {
        conn.httpErrors.push(`HTTP ${response.status} on ${method} ${u.pathname}`);
      }
      return response;
    };
  }

  /** Open the transport and run the SDK's connect (initialize), all within TIMEOUT_S. */
  async openClient(conn) {
    const fetchImpl = this.fetchFor(conn);
    const transport =
      this.transport === 'sse'
        ? new SSEClientTransport(this.url, { fetch: fetchImpl })
        : new StreamableHTTPClientTransport(this.url, { fetch: fetchImpl });
    const client = new Client({ name: 'ssekeeper-mcp-calls', version: '1.0.0' }, { capabilities: {} });
    client.onerror = (err) => {
      const text = describe(err);
      log(`transport error: ${text}`);
      conn.faults.push(text);
      if (conn.connected) conn.faulted = true;
    };
    const handle = { client, transport };
    try {
      // The initialize request has the SDK's timeout; the whole connect (SSE: the GET and its
      // `endpoint` event first) is bounded by TIMEOUT_S as well.
      await bounded(
        client.connect(transport, { timeout: this.timeoutMs }),
        this.timeoutMs,
        `connect timed out after ${this.timeoutMs / 1000}s`,
      );
    } catch (err) {
      await this.closeClient(handle);
      throw err;
    }
    conn.connected = true;
    conn.faults = [];
    return handle;
  }

  /** Close client + transport (streamable: DELETE the session first, as the Python SDK does), bounded. */
  async closeClient({ client, transport }) {
    const steps = (async () => {
      if (this.transport === 'streamable' && transport.sessionId) {
        await transport.terminateSession().catch(() => {});
      }
      await client.close().catch(() => {});
    })();
    try {
      await bounded(steps, this.exitGraceMs, 'close timed out');
    } catch {
      await transport.close().catch(() => {});
    }
  }

  sessionGone(err, conn) {
    if (err instanceof McpError) {
      if (err.code === ErrorCode.ConnectionClosed) return true;
      if (/Session not found|Session terminated/.test(err.message)) return true;
      if (conn.faulted) return true; // e.g. answered by the new session of a reconnected SSE stream
      return conn.httpErrors.some((e) => e.startsWith('HTTP 404 '));
    }
    return true; // transport failures: HTTP errors, fetch failures, a closed stream
  }

  /** Make call i of session s and record it; true when the session is gone. */
  async oneCall(handle, conn, s, i) {
    const text = `s${s}-c${i}`;
    const t0 = performance.now();
    conn.httpErrors = [];
    conn.inflight = [i, t0];
    let outcome = 'error';
    let error = null;
    let pod = null;
    let gone = false;
    const abort = new AbortController();
    try {
      const result = await bounded(
        handle.client.callTool({ name: 'slow_echo', arguments: { text, delay_ms: this.delayMs } }, undefined, {
          timeout: this.timeoutMs,
          signal: abort.signal,
        }),
        this.timeoutMs + this.graceMs,
        `no answer within ${(this.timeoutMs + this.graceMs) / 1000}s`,
      );
      const answer = (result.content ?? []).map((c) => (typeof c.text === 'string' ? c.text : '')).join('');
      if (result.isError) {
        error = `tool error: ${answer}`;
      } else if (answer.startsWith(text + '@')) {
        outcome = 'answered';
        pod = answer.slice(text.length + 1);
      } else {
        error = `unexpected answer ${JSON.stringify(answer)} to ${JSON.stringify(text)}`;
      }
    } catch (err) {
      if (err instanceof TimeoutErr) {
        abort.abort(err); // the SDK's own timeout should have fired: drop the request
        outcome = 'hung';
        error = err.message;
        gone = conn.faulted;
      } else if (err instanceof McpError && err.code === ErrorCode.RequestTimeout) {
        outcome = 'hung';
        error = `no answer within ${this.timeoutMs / 1000}s (${describe(err)})`;
        gone = conn.faulted;
      } else {
        error = describe(err);
        gone = this.sessionGone(err, conn);
      }
    }
    const seen = [...conn.httpErrors, ...conn.faults.map((f) => `transport: ${f}`)];
    conn.faults = [];
    if (seen.length) {
      let unique = [...new Set(seen)];
      // An SSE stream that keeps reconnecting reports every few seconds: keep the first few.
      if (unique.length > 8) unique = [...unique.slice(0, 8), `... ${unique.length - 8} more`];
      error = error ? `${error}; ${unique.join(', ')}` : unique.join(', ');
      if (outcome === 'hung') gone = true; // the answer cannot come on a transport that failed
    }
    if (outcome === 'answered') gone = false;
    conn.inflight = null;
    this.record(s, i, outcome, error, pod, t0);
    return gone;
  }

  record(s, i, outcome, error, pod, t0) {
    this.calls[s][i] = {
      session: s,
      call: i,
      outcome,
      error,
      pod,
      ms: Math.round((performance.now() - t0) * 10) / 10,
    };
    if (pod !== null && !this.sessions[s].pods.includes(pod)) this.sessions[s].pods.push(pod);
  }

  async session(s) {
    const info = this.sessions[s];
    let first = true;
    let i = 0;
    while (first || i < this.nCalls) {
      const conn = new Conn();
      const tConnect = performance.now();
      let handle;
      try {
        handle = await this.openClient(conn);
      } catch (err) {
        let failure = describe(err);
        if (conn.httpErrors.length) failure += ` (${conn.httpErrors.join(', ')})`;
        if (first) {
          first = false;
          info.init_error = failure;
          this.markReady();
          await this.go;
        } else {
          // Re-initialising failed: that costs the call it was for, then try again.
          info.reinit_failures += 1;
          this.record(s, i, 'error', `re-initialize failed: ${failure}`, null, tConnect);
          i += 1;
          // Back off before the next attempt, as clients do (a refused connect is instant).
          if (i < this.nCalls) await sleep(this.backoffMs);
        }
        continue;
      }
      try {
        info.session_ids.push(conn.sessionId);
        if (first) {
          first = false;
          info.initialized = true;
          this.markReady();
        } else {
          info.reinits += 1;
        }
        await this.go;
        while (i < this.nCalls) {
          const gone = await this.oneCall(handle, conn, s, i);
          i += 1;
          if (gone) break;
        }
      } catch (err) {
        // Not expected (oneCall records every failure); keep the run going.
        log(`session ${s}: ${describe(err)}`);
        if (conn.inflight) {
          const [ci, t0] = conn.inflight;
          if (this.calls[s][ci] === null) this.record(s, ci, 'error', `transport failed: ${describe(err)}`, null, t0);
          i = Math.max(i, ci + 1);
        }
      } finally {
        await this.closeClient(handle);
      }
    }
  }

  async run() {
    const perCall = 2 * this.timeoutMs + this.graceMs + 2 * this.exitGraceMs + this.backoffMs;
    const budget = this.timeoutMs + this.exitGraceMs + this.nCalls * perCall + 10000;
    const all = Promise.all(Array.from({ length: this.nSessions }, (_, s) => this.session(s)));
    try {
      await bounded(all, budget, 'client-wide deadline');
    } catch (err) {
      if (!(err instanceof TimeoutErr)) throw err;
      log(`client-wide deadline (${budget / 1000}s) reached`);
    }
  }

  report() {
    const calls = [];
    for (let s = 0; s < this.nSessions; s++) {
      for (let i = 0; i < this.nCalls; i++) {
        calls.push(
          this.calls[s][i] ?? {
            session: s,
            call: i,
            outcome: 'hung',
            error: 'not made or not finished before the client-wide deadline',
            pod: null,
            ms: null,
          },
        );
      }
    }
    return { calls, sessions: this.sessions };
  }
}

function usage(msg) {
  process.stderr.write(`${msg}\nusage: node mcp_calls.mjs BASE_URL TRANSPORT SESSIONS CALLS DELAY_MS TIMEOUT_S\n`);
  process.exit(1);
}

async function main() {
  const args = process.argv.slice(2);
  if (args.length < 6) usage('mcp_calls: 6 arguments needed');
  const [baseUrl, transport, sessions, calls, delayMs, timeout] = args;
  if (!(transport in PATHS)) usage(`TRANSPORT must be one of ${Object.keys(PATHS).join(', ')}`);
  const nums = [Number.parseInt(sessions, 10), Number.parseInt(calls, 10), Number.parseInt(delayMs, 10), Number(timeout)];
  if (nums.some((n) => !Number.isFinite(n) || n < 0)) usage('mcp_calls: SESSIONS CALLS DELAY_MS TIMEOUT_S must be numbers');

  // Nothing the SDK leaves behind may crash the run or hold the exit.
  process.on('unhandledRejection', (err) => log(`unhandled rejection: ${describe(err)}`));
  process.on('uncaughtException', (err) => log(`uncaught exception: ${describe(err)}`));

  const runner = new Runner(baseUrl, transport, ...nums);
  try {
    await runner.run();
  } catch (err) {
    process.stderr.write(`mcp_calls: ${describe(err)}\n`);
  }
  if (!runner.readyPrinted) process.stderr.write('mcp_calls: never ready\n');
  const line = JSON.stringify(runner.report()) + '\n';
  // Exit at once (open SSE streams and timers must not hold it), once stdout has the line.
  const exit = () => process.exit(0);
  setTimeout(exit, 2000).unref();
  process.stdout.write(line, exit);
}

main();

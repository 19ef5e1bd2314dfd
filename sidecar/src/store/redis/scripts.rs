//! The Lua scripts that make fencing atomic.
//!
//! Each runs on one session's keys only (`KEYS` = events, epoch, lease, appid, marks, all carrying the
//! session's hash tag, so one Cluster slot; `append_many` is `append` for several sessions in one
//! call, never sent to a Cluster), sent as `EVALSHA` with a fallback to loading the
//! script after a `NOSCRIPT` (a restarted or failed-over server). Redis runs a script without
//! interleaving other commands, which is what makes "check the epoch, then write" one step.
//!
//! Conventions shared with `codec.rs`:
//! - the epoch key holds a decimal counter; anything else is reported as `MALFORMED` before any
//!   write, so a corrupt key never turns into a partial write;
//! - verdict replies are `{status, detail}`: 1 ok, 0 fenced (detail = current epoch, `"0"` when the
//!   session no longer exists), 2 out of order (detail = the stream's newest id);
//! - lease liveness is the `until` field (server milliseconds from `TIME`), not the key's TTL, so
//!   a lease that lapsed while its owner was slow can be renewed as long as nobody took over;
//! - every write (append, acquire, renew) slides the TTL of all five keys (`PEXPIRE`), so a
//!   session expires as a whole.

use ::redis::Script;

/// Reads the epoch counter (`'0'` when absent) or raises `MALFORMED`. Inlined into each script.
const EPOCH_OF: &str = r#"
local function epoch_of(key)
  local raw = redis.call('GET', key)
  if not raw then return '0' end
  if not string.match(raw, '^%d+$') then
    return redis.error_reply('MALFORMED ' .. key .. ' does not hold an epoch counter')
  end
  return raw
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// `append(epoch, limit, ttl_ms, appid, appid_mode, n, floor_ms, cap, [id, nargs, field, value,
/// …] × n)`; `appid_mode`: 1 set the newest app id, 2 clear it (the app reset it), 0 leave it.
///
/// Refuses (0) unless `epoch` is current. Entries at or below the stream's newest id are skipped
/// (a retried batch whose first attempt was applied but timed out) and the rest added, so a retry
/// never loses the new entries; the caller checked the batch itself is increasing. Every id is
/// checked before anything is written (2: an id this version does not write), so every `XADD`
/// below succeeds and the batch lands whole or not at all. The newest event's app id is kept in
/// its own key so `last_app_id` is one `GET` even after trimming.
///
/// Retention (`Retention` in `store/mod.rs`, same rule), only once the stream holds more than
/// `limit` entries (below it nothing is trimmed and nothing else is done): the marks list
/// (`KEYS[5]`, entries `"<second>:<first seq appended in it>"`) says when entries were written,
/// to the second, and is cut to the time floor on each append; when it starts, every entry kept
/// counts as written at that second. Keep the newest `limit` entries or, when more are
/// younger than `floor_ms`, those (`MINID`); while the lease is `draining`, everything; never
/// more than `cap` (`MAXLEN`), and the reply's third element is 1 when the cap removed entries
/// the floor or the drain wanted. Trims are `~` (whole radix-tree nodes: up to ~100 more kept).
/// Seqs are far below 2^53, so Lua's doubles hold them exactly.
const APPEND: &str = r#"
local cur = epoch_of(KEYS[2])
if type(cur) == 'table' then return cur end
if cur ~= ARGV[1] then return {0, cur} end
local n = tonumber(ARGV[6])
local cut = 0
if n > 0 then
  local ts = nil
  local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #top > 0 then
    ts = string.match(top[1][1], '^(%d+)-%d+$')
    if not ts then return {2, top[1][1]} end
  end
  -- Compare decimal strings without going through Lua's doubles.
  local function stored(fs)
    return ts ~= nil and (#fs < #ts or (#fs == #ts and fs <= ts))
  end
  local starts, first = {}, n + 1
  local pos = 9
  for j = 1, n do
    local fs = string.match(ARGV[pos], '^(%d+)-0$')
    if not fs then return {2, ARGV[pos]} end
    if first > n and not stored(fs) then first = j end
    starts[j] = pos
    pos = pos + 2 + tonumber(ARGV[pos + 1])
  end
  -- The fields straight from ARGV (no table built per entry: a third of the script's time).
  for j = first, n do
    local p = starts[j]
    redis.call('XADD', KEYS[1], ARGV[p], unpack(ARGV, p + 2, p + 1 + tonumber(ARGV[p + 1])))
  end
  if first <= n then
    if ARGV[5] == '1' then redis.call('SET', KEYS[4], ARGV[4])
    elseif ARGV[5] == '2' then redis.call('DEL', KEYS[4]) end
    local limit, cap = tonumber(ARGV[2]), tonumber(ARGV[8])
    -- Within the count nothing is trimmed, and no time is kept: the common case costs one XLEN.
    if redis.call('XLEN', KEYS[1]) > limit then
      local now = now_ms()
      local sec = math.floor(now / 1000)
      local function mark(raw)
        if not raw then return nil end
        local ms, mq = string.match(raw, '^(%d+):(%d+)$')
        return tonumber(ms), tonumber(mq)
      end
      local tail = mark(redis.call('LINDEX', KEYS[5], -1))
      if not tail then
        -- Marks start now: every entry kept so far counts as written now (kept longer, never
        -- shorter, than the floor asks).
        local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
        redis.call('RPUSH', KEYS[5], sec .. ':' .. string.match(oldest[1][1], '^(%d+)'))
      elseif tail < sec then
        redis.call('RPUSH', KEYS[5], sec .. ':' .. string.match(ARGV[starts[first]], '^(%d+)'))
      end
      local cutoff = math.floor((now - tonumber(ARGV[7])) / 1000)
      local floor_from = nil
      while true do
        local hs, hq = mark(redis.call('LINDEX', KEYS[5], 0))
        if not hs then redis.call('DEL', KEYS[5]); break end
        if hs >= cutoff then floor_from = hq; break end
        redis.call('LPOP', KEYS[5])
      end
      local newest = tonumber(string.match(ARGV[starts[n]], '^(%d+)'))
      local want = limit
      if redis.call('HGET', KEYS[3], 'state') == 'draining' then
        want = cap + 1
      elseif floor_from and newest - floor_from + 1 > limit then
        want = newest - floor_from + 1
      end
      if want > cap then
        if redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', cap) > 0 then cut = 1 end
      elseif want > limit then
        redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%.0f-0', floor_from))
      else
        redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', limit)
      end
    end
  end
end
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
return {1, cur, cut}
"#;

/// `acquire(owner, addr, lease_ttl_ms, key_ttl_ms)` → the new epoch.
///
/// Unconditional takeover: epoch + 1 (1 for a new session), a fresh lease hash, every key's TTL
/// slid to `key_ttl_ms` (the longer of the session and lease TTLs).
const ACQUIRE: &str = r#"
local cur = epoch_of(KEYS[2])
if type(cur) == 'table' then return cur end
local e = redis.call('INCR', KEYS[2])
local untl = string.format('%.0f', now_ms() + tonumber(ARGV[3]))
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'owner', ARGV[1], 'addr', ARGV[2], 'epoch', tostring(e),
  'state', 'live', 'until', untl)
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return e
"#;

/// `acquire_if(owner, addr, lease_ttl_ms, key_ttl_ms, expected)` → `{1, new epoch}`, or
/// `{0, current}` (nothing written) unless the epoch is still `expected` (`'0'` = no session).
///
/// The compare and the increment are one step, so of two pods that saw the same epoch and take
/// the session over at the same moment exactly one wins.
const ACQUIRE_IF: &str = r#"
local cur = epoch_of(KEYS[2])
if type(cur) == 'table' then return cur end
if cur ~= ARGV[5] then return {0, cur} end
local e = redis.call('INCR', KEYS[2])
local untl = string.format('%.0f', now_ms() + tonumber(ARGV[3]))
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[3], 'owner', ARGV[1], 'addr', ARGV[2], 'epoch', tostring(e),
  'state', 'live', 'until', untl)
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return {1, tostring(e)}
"#;

/// `renew(epoch, state, lease_ttl_ms, key_ttl_ms)`: extends (or revives) the lease while `epoch`
/// is current and the lease was not released.
const RENEW: &str = r#"
local cur = epoch_of(KEYS[2])
if type(cur) == 'table' then return cur end
if cur ~= ARGV[1] then return {0, cur} end
if redis.call('EXISTS', KEYS[3]) == 0 then return {0, cur} end
local untl = string.format('%.0f', now_ms() + tonumber(ARGV[3]))
redis.call('HSET', KEYS[3], 'state', ARGV[2], 'until', untl)
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
return {1, cur}
"#;

/// `release(epoch)`: drops the lease if `epoch` is current; a session already gone is released.
const RELEASE: &str = r#"
local cur = epoch_of(KEYS[2])
if type(cur) == 'table' then return cur end
if cur == '0' then return {1, cur} end
if cur ~= ARGV[1] then return {0, cur} end
redis.call('DEL', KEYS[3])
return {1, cur}
"#;

/// `lease()` → `{now_ms, field, value, …}`: the lease hash with the server's clock beside it, so
/// expiry is judged by the same clock that set `until`.
const LEASE: &str = r#"
local out = {string.format('%.0f', now_ms())}
local f = redis.call('HGETALL', KEYS[3])
for i = 1, #f do out[#out + 1] = f[i] end
return out
"#;

/// `broadcast_append(epoch, token, floor, limit, ttl_ms, appid, appid_mode, n, [nargs, field,
/// value, …] × n)` on a broadcast path's keys (events, epoch, lease, appid, token) →
/// `{1, first, last}`, `{0, current}` (fenced), `{2, id}` (a stream id this version does not
/// write) or `{3, last}` (this `token` was applied already).
///
/// Unlike a session's append the script numbers the entries: the holder and every pod's
/// publishes write one sequence, so the seq is `max(newest stored, floor) + 1` onwards. `epoch`
/// empty: a publish, not fenced (the holder's fencing protects the upstream, which only the
/// holder reads). `token` empty: not deduplicated.
const BROADCAST_APPEND: &str = r#"
local cur = epoch_of(KEYS[2])
if type(cur) == 'table' then return cur end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return {0, cur} end
local last = 0
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then
  local ts = string.match(top[1][1], '^(%d+)-0$')
  if not ts then return {2, top[1][1]} end
  last = tonumber(ts)
end
if ARGV[2] ~= '' and redis.call('GET', KEYS[5]) == ARGV[2] then
  return {3, string.format('%.0f', last)}
end
local floor = tonumber(ARGV[3])
if floor > last then last = floor end
local first = last + 1
local n = tonumber(ARGV[8])
local pos = 9
for j = 1, n do
  local nf = tonumber(ARGV[pos])
  last = last + 1
  local args = {'XADD', KEYS[1], string.format('%.0f-0', last)}
  for a = pos + 1, pos + nf do args[#args + 1] = ARGV[a] end
  redis.call(unpack(args))
  pos = pos + 1 + nf
end
if ARGV[7] == '1' then redis.call('SET', KEYS[4], ARGV[6]) end
if ARGV[2] ~= '' then redis.call('SET', KEYS[5], ARGV[2]) end
redis.call('XTRIM', KEYS[1], 'MAXLEN', '~', ARGV[4])
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
end
return {1, string.format('%.0f', first), string.format('%.0f', last)}
"#;

/// `stream_counts(pod, rest, stale_ms, ttl_ms)` on the one rebalancing hash (KEYS[1], see
/// `contract::rebalance`): writes this pod's entry `v1 <now> <rest>` stamped with the server's
/// clock (`rest` = `<total> <resumable> <state>`; empty withdraws the entry), deletes `v1`
/// entries older than `stale_ms` (values of other versions are left to their writers), slides
/// the key's TTL, and returns `{now, field, value, …}` for every entry kept. One call per pod
/// per interval: a write and a read in one round trip, atomic, never per event.
const STREAM_COUNTS: &str = r#"
local now = now_ms()
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], 'v1 ' .. string.format('%.0f', now) .. ' ' .. ARGV[2])
end
local all = redis.call('HGETALL', KEYS[1])
local out = {string.format('%.0f', now)}
local stale = tonumber(ARGV[3])
for i = 1, #all, 2 do
  local at = tonumber(string.match(all[i + 1], '^v1 (%d+) '))
  if at ~= nil and now - at > stale then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
if #all > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return out
"#;

/// `append` for several sessions in one call: `KEYS` are five per session (each session's own,
/// as for `append`); `ARGV` is, per session, the count of its `append` arguments, then those.
/// Replies one `append` verdict per session, in order. One script call instead of one per
/// session: Redis's per-call cost (parsing the call, entering Lua) is paid once for a whole
/// pipeline of sessions (see `coalesce.rs`). Not for Redis Cluster (the keys span slots).
const APPEND_MANY_TAIL: &str = r#"
local out, ko, ao = {}, 0, 1
while ao <= #ARGV do
  local n = tonumber(ARGV[ao])
  local k = {KEYS[ko + 1], KEYS[ko + 2], KEYS[ko + 3], KEYS[ko + 4], KEYS[ko + 5]}
  local a = {}
  for i = 1, n do a[i] = ARGV[ao + i] end
  out[#out + 1] = append_one(k, a)
  ko, ao = ko + 5, ao + 1 + n
end
return out
"#;

/// The compiled scripts (their SHA1s are computed once).
pub(crate) struct Scripts {
    pub append: Script,
    pub append_many: Script,
    pub acquire: Script,
    pub acquire_if: Script,
    pub renew: Script,
    pub release: Script,
    pub lease: Script,
    pub broadcast_append: Script,
    pub stream_counts: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{EPOCH_OF}{body}"));
        Self {
            append: s(APPEND),
            // The same body as a function of its keys and arguments, called per session.
            append_many: s(&format!(
                "local function append_one(KEYS, ARGV)\n{APPEND}\nend\n{APPEND_MANY_TAIL}"
            )),
            acquire: s(ACQUIRE),
            acquire_if: s(ACQUIRE_IF),
            renew: s(RENEW),
            release: s(RELEASE),
            lease: s(LEASE),
            broadcast_append: s(BROADCAST_APPEND),
            stream_counts: s(STREAM_COUNTS),
        }
    }
}

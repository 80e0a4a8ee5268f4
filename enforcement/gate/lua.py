"""The Redis gate's Lua scripts: the twins of ``core.py`` (read them side by side).

Each script runs atomically, reads the time with ``TIME`` (so every gateway process shares one
clock), and touches only keys of one account, all declared in KEYS under one hash tag. Numbers
are integers below 2**53 (times in µs), exact as Lua doubles; state is stored as packed
little-endian binary records (``struct.pack``: doubles, and 32-bit or 8-bit integers where a
value is small), which round-trip exactly, cost no string parsing and keep every value of the
hash under 64 bytes, so Redis keeps it as one compact listpack.
Settings are prepended as ``local`` constants by ``render``, so a check sends only the key id
and the token count.

The check is the hot path: an allowed request is three commands (TIME, an HMGET of three
fields, an HSET of two), plus a PEXPIREAT only when the hash's expiry, mirrored in the account usage
record, must move later. Configuration is written in the shape the check reads: the account
record ``a`` holds the status, the account limits and a summary of the throttles (the most
restrictive account-wide factor and until when that holds), so the throttle JSON is decoded
only by the state updates, and by a check only while a key-specific throttle is active or after
an account throttle has expired (which refreshes the summary). The reply is one packed string
rather than an array (cheaper for Redis to build). The field layout is in ``keys.py``.
A rate/quota denial also records itself: its time on the account's list of denial times (LPUSH,
then LINDEX of the oldest, an LTRIM once the list holds the policy's count, an RPOP and LINDEX
per time that has left the window, PEXPIRE) and its key in the denied keys (ZADD,
ZREMRANGEBYSCORE, ZCARD, PEXPIRE).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PRELUDE = """
local MINUTE_US, PPM = 60000000, 1000000
local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
local pack, unpack = struct.pack, struct.unpack
local A_FMT, U_FMT, K_FMT = '<bddi4ddi4db', '<dddd', '<dddi4dd'  -- keys.py: 50, 32, 44 bytes
"""

# Helpers for the state scripts (the check inlines what it needs: no closures on the hot path).
# The account record `a`: status (0 active, 3 suspended, 4 terminated: the reason codes),
# until_ms (0: indefinite), status version, rpm, tpd (-1: the gate's defaults), limits version
# (-1: none yet), then the throttle summary: account ppm, until_ms (0: no expiry ahead),
# 1 when a key-specific throttle is active. The account usage `u`: tat, window, used, expiry ms.
HELPERS = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function read_account()
  local raw = redis.call('HGET', KEYS[1], 'a')
  if raw then return {unpack(A_FMT, raw)} end
  return {0, 0, -1, -1, -1, -1, PPM, 0, 0}
end
-- Writes the account record, and keeps the (now configured) hash STATE_TTL_MS from now.
local function write_account(a, now_ms)
  local want = now_ms + STATE_TTL_MS
  local tat, window, used = 0, -1, 0
  local u = redis.call('HGET', KEYS[1], 'u')
  if u then tat, window, used = unpack(U_FMT, u) end
  redis.call('HSET', KEYS[1],
    'a', pack(A_FMT, a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9]),
    'u', pack(U_FMT, tat, window, used, want))
  redis.call('PEXPIREAT', KEYS[1], want)
end
"""

# core.throttle_ppm over the decoded throttles, for the account summary (and one key's factor).
# Sets acct_ppm, thr_until (earliest expiry of an active account throttle, 0: none),
# key_thr (1: some key-specific throttle is active) and key_ppm (that of `key_id`).
SUMMARIZE = """
  for _, th in pairs(throttles) do
    if th.l == 0 and (th.e == 0 or now_ms < th.e) then
      if th.k == '' then
        acct_ppm = min(acct_ppm, th.f)
        if th.e > 0 and (thr_until == 0 or th.e < thr_until) then thr_until = th.e end
      else
        key_thr = 1
        if th.k == key_id then key_ppm = min(key_ppm, th.f) end
      end
    end
  end
"""

# KEYS: the account's state hash, denial times, denied keys. ARGV: key_id, tokens.
# Returns little-endian int64 packed in one string (cheaper for Redis than an array reply):
# when allowed, six: limit_req, remaining_req, reset_req_ms, limit_tok, remaining_tok,
# reset_tok_ms (the reason, retry and denial counts are then 0); when denied, ten: reason,
# the same six, retry_ms, denials_in_window, denied_keys_last_minute. Rendered with
# REQUIRE_STATUS = 1, one (-1) when the account record holds no status: nothing was counted.
# Arithmetic stays in the VM where it can (`x - x % y` is floor to a multiple, `if x < 0`
# is max): every value is an integer below 2**53, so each step is exact.
CHECK = (
    """
local key_id, tokens = ARGV[1], ARGV[2] + 0
local key_field = 'k:' .. key_id
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local now_ms = (now - now % 1000) / 1000
local s = redis.call('HMGET', KEYS[1], 'a', 'u', key_field)

-- The account record and the key's record (keys.py); -1 limits: the defaults.
local status, until_ms, a_sv, a_rpm, a_tpd, a_lv, acct_ppm, thr_until, key_thr =
  0, 0, -1, -1, -1, -1, PPM, 0, 0
if s[1] then
  status, until_ms, a_sv, a_rpm, a_tpd, a_lv, acct_ppm, thr_until, key_thr =
    unpack(A_FMT, s[1])
end
-- No status held (never set, expired, or lost with Redis's data): with a seeder, ask for the
-- account's standing first (one int64, -1), counting nothing (Gate.set_seeder).
if REQUIRE_STATUS == 1 and a_sv < 0 then return pack('<i8', -1) end
local key_tat, key_window, key_stored, k_rpm, k_tpd, k_v = 0, -1, 0, -1, -1, -1
if s[3] then key_tat, key_window, key_stored, k_rpm, k_tpd, k_v = unpack(K_FMT, s[3]) end
local acct_rpm, acct_tpd, key_rpm, key_tpd = DEFAULT_RPM, DEFAULT_TPD, DEFAULT_RPM, DEFAULT_TPD
if a_rpm >= 0 then acct_rpm, acct_tpd = a_rpm, a_tpd end
if k_rpm >= 0 then key_rpm, key_tpd = k_rpm, k_tpd end

-- Throttles, core.throttle_ppm: the summary holds unless a key throttle is active or an
-- account throttle has expired since it was made; then decode them and refresh it.
local key_ppm = acct_ppm
if key_thr == 1 or (thr_until > 0 and now_ms >= thr_until) then
  local old_ppm, old_until, old_key_thr = acct_ppm, thr_until, key_thr
  acct_ppm, thr_until, key_thr, key_ppm = PPM, 0, 0, PPM
  local raw = redis.call('HGET', KEYS[1], 'thr')
  local throttles = raw and cjson.decode(raw) or {}
"""
    + SUMMARIZE
    + """
  key_ppm = min(key_ppm, acct_ppm)
  if acct_ppm ~= old_ppm or thr_until ~= old_until or key_thr ~= old_key_thr then
    redis.call('HSET', KEYS[1], 'a', pack(A_FMT, status, until_ms, a_sv, a_rpm, a_tpd,
      a_lv, acct_ppm, thr_until, key_thr))
  end
end
if key_ppm < PPM then  -- throttled (key_ppm <= acct_ppm)
  local function effective(limit, ppm)  -- core.effective, exact for limits below 1e15
    if ppm >= PPM or limit <= 0 then return limit end
    local high = floor(limit / PPM)
    return max(high * ppm + floor((limit - high * PPM) * ppm / PPM), 1)
  end
  key_rpm, key_tpd = effective(key_rpm, key_ppm), effective(key_tpd, key_ppm)
  acct_rpm, acct_tpd = effective(acct_rpm, acct_ppm), effective(acct_tpd, acct_ppm)
end

-- Usage: the GCRA theoretical arrival time (µs), the token window's index and the tokens used
-- in it; the account's usage record also mirrors the hash's expiry (ms).
local window = (now - now % WINDOW_US) / WINDOW_US
local window_end = window * WINDOW_US + WINDOW_US
local acct_tat, acct_window, acct_stored, expires = 0, -1, 0, 0
if s[2] then acct_tat, acct_window, acct_stored, expires = unpack(U_FMT, s[2]) end
local new_window = acct_window ~= window
local acct_used = new_window and 0 or acct_stored
local key_used = key_window == window and key_stored or 0

-- Requests, core.request_scope: interval = ceil(minute / limit); busy = the part of the
-- minute in use; late > 0: denied, wait this long.
local key_interval = MINUTE_US - MINUTE_US % key_rpm
if key_interval < MINUTE_US then key_interval = key_interval / key_rpm + 1
else key_interval = key_interval / key_rpm end
local acct_interval = MINUTE_US - MINUTE_US % acct_rpm
if acct_interval < MINUTE_US then acct_interval = acct_interval / acct_rpm + 1
else acct_interval = acct_interval / acct_rpm end
local key_period, acct_period = key_interval * key_rpm, acct_interval * acct_rpm
local key_busy, acct_busy = key_tat - now, acct_tat - now
if key_busy < 0 then key_busy = 0 end
if acct_busy < 0 then acct_busy = 0 end
local key_late = key_busy + key_interval - key_period
local acct_late = acct_busy + acct_interval - acct_period
-- Tokens, core.token_scope.
local need = tokens > 0 and tokens or 1
local key_short, acct_short = key_used + need > key_tpd, acct_used + need > acct_tpd

-- core.refusal, then core.verdict.
local reason, retry = 0, 0
if status == 4 then reason = 4
elseif status == 3 then
  if until_ms == 0 then reason = 3
  elseif now < until_ms * 1000 then reason, retry = 3, until_ms * 1000 - now end
end
if reason == 0 then
  if key_short or acct_short then reason, retry = 2, window_end - now end
  if key_late > 0 or acct_late > 0 then
    if reason == 0 then reason = 1 end
    if key_late > retry then retry = key_late end
    if acct_late > retry then retry = acct_late end
  end
end

-- Expiry: the hash outlives every TAT in it (at most ~70 s ahead) by USAGE_TTL_MS, the token
-- window while the account has used tokens in it, and configuration by STATE_TTL_MS. The
-- mirrored expiry is renewed only when it falls below `keep`.
local keep, want = now_ms + USAGE_TTL_MS - USAGE_SLACK_MS, now_ms + USAGE_TTL_MS
if s[1] then keep, want = now_ms + STATE_TTL_MS - STATE_SLACK_MS, now_ms + STATE_TTL_MS end

local allowed = reason == 0
local denials, denied_keys = 0, 0
if allowed then
  if new_window then
    -- The account's first request in this window: forget its keys idle since the last one
    -- (those without configured limits; a configured key keeps its record).
    local all = redis.call('HGETALL', KEYS[1])
    for i = 1, #all, 2 do
      local field = all[i]
      if string.sub(field, 1, 2) == 'k:' and field ~= key_field then
        local tat, w, _, rpm = unpack(K_FMT, all[i + 1])
        if w ~= window and tat <= now and rpm < 0 then redis.call('HDEL', KEYS[1], field) end
      end
    end
  end
  if acct_used + tokens > 0 and window_end / 1000 > keep then
    keep = window_end / 1000
    if keep > want then want = keep end
  end
  local renew = expires < keep
  if renew then expires = want end
  redis.call('HSET', KEYS[1],
    'u', pack(U_FMT, now + acct_busy + acct_interval, window, acct_used + tokens, expires),
    key_field, pack(K_FMT, now + key_busy + key_interval, window, key_used + tokens,
      k_rpm, k_tpd, k_v))
  if renew then redis.call('PEXPIREAT', KEYS[1], want) end
  -- core.binding after this request: an allowed request left both scopes a request and its
  -- tokens (late <= 0: period - busy >= interval; used + need <= tpd), so nothing to clamp.
  local key_left = key_period - key_busy - key_interval
  key_left = (key_left - key_left % key_interval) / key_interval
  local acct_left = acct_period - acct_busy - acct_interval
  acct_left = (acct_left - acct_left % acct_interval) / acct_interval
  local key_tok, acct_tok = key_tpd - key_used - tokens, acct_tpd - acct_used - tokens
  local limit_req, left_req, busy = key_rpm, key_left, key_busy + key_interval + 999
  if acct_left < key_left or (acct_left == key_left and acct_rpm < key_rpm) then
    limit_req, left_req, busy = acct_rpm, acct_left, acct_busy + acct_interval + 999
  end
  local limit_tok, left_tok = key_tpd, key_tok
  if acct_tok < key_tok or (acct_tok == key_tok and acct_tpd < key_tpd) then
    limit_tok, left_tok = acct_tpd, acct_tok
  end
  local reset_tok = window_end - now + 999
  return pack('<i8i8i8i8i8i8', limit_req, left_req, (busy - busy % 1000) / 1000,
    limit_tok, left_tok, (reset_tok - reset_tok % 1000) / 1000)
end

-- Denied: nothing is counted; the hash's expiry still moves when due.
if s[1] and expires < keep then
  redis.call('HSET', KEYS[1], 'u', pack(U_FMT, acct_tat, acct_window, acct_stored, want))
  redis.call('PEXPIREAT', KEYS[1], want)
end
if reason <= 2 then
  -- core.record_denial: the latest DENIAL_COUNT denials' times, newest first; those
  -- DENIAL_WINDOW_US or more before now leave from the tail (each time is popped at most once).
  denials = redis.call('LPUSH', KEYS[2], now)
  if denials > DENIAL_COUNT then
    redis.call('LTRIM', KEYS[2], 0, DENIAL_COUNT - 1)
    denials = DENIAL_COUNT
  end
  local horizon = now - DENIAL_WINDOW_US
  while denials > 1 and tonumber(redis.call('LINDEX', KEYS[2], -1)) <= horizon do
    redis.call('RPOP', KEYS[2])
    denials = denials - 1
  end
  redis.call('PEXPIRE', KEYS[2], DENIAL_WINDOW_US / 1000)
  redis.call('ZADD', KEYS[3], now, key_id)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - DENIED_KEYS_US)
  denied_keys = redis.call('ZCARD', KEYS[3])
  if denied_keys > DENIED_KEYS_CAP then
    redis.call('ZREMRANGEBYRANK', KEYS[3], 0, denied_keys - DENIED_KEYS_CAP - 1)
    denied_keys = DENIED_KEYS_CAP
  end
  redis.call('PEXPIRE', KEYS[3], DENIED_KEYS_US / 1000)
end

-- core.binding: report the scope with less left.
local key_left = key_period - key_busy
key_left = (key_left - key_left % key_interval) / key_interval
local acct_left = acct_period - acct_busy
acct_left = (acct_left - acct_left % acct_interval) / acct_interval
local key_tok, acct_tok = key_tpd - key_used, acct_tpd - acct_used
if key_left < 0 then key_left = 0 end
if acct_left < 0 then acct_left = 0 end
if key_tok < 0 then key_tok = 0 end
if acct_tok < 0 then acct_tok = 0 end
local limit_req, left_req, busy = key_rpm, key_left, key_busy
if acct_left < key_left or (acct_left == key_left and acct_rpm < key_rpm) then
  limit_req, left_req, busy = acct_rpm, acct_left, acct_busy
end
local limit_tok, left_tok = key_tpd, key_tok
if acct_tok < key_tok or (acct_tok == key_tok and acct_tpd < key_tpd) then
  limit_tok, left_tok = acct_tpd, acct_tok
end
-- Durations in ms, rounded up: ceil(x / 1000) = floor((x + 999) / 1000) for x >= 0.
busy, retry = busy + 999, retry + 999
local reset_tok = window_end - now + 999
return pack('<i8i8i8i8i8i8i8i8i8i8', reason, limit_req, left_req, (busy - busy % 1000) / 1000,
  limit_tok, left_tok, (reset_tok - reset_tok % 1000) / 1000, (retry - retry % 1000) / 1000,
  denials, denied_keys)
"""
)

# KEYS: denial times, denied keys. Returns {denials_in_window, denied_keys_last_minute}.
# Only the latest DENIAL_COUNT times are read: a list pushed by a gate with a larger count (a
# policy's count lowered, an older process still running) holds more, which no check counts.
DENIAL_STATS = """
local now = now_us()
local horizon = now - DENIAL_WINDOW_US
local denials = 0
for _, at in ipairs(redis.call('LRANGE', KEYS[1], 0, DENIAL_COUNT - 1)) do
  if tonumber(at) > horizon then denials = denials + 1 end
end
local keys_horizon = string.format('(%d', now - DENIED_KEYS_US)
return {denials, redis.call('ZCOUNT', KEYS[2], keys_horizon, '+inf')}
"""

# KEYS: state. ARGV: key_id, rpm, tpd, version: a key's limits, kept in its record `k:<key>`
# (tat, window, used, rpm, tpd, version) beside its usage.
SET_KEY_LIMITS = """
local field, version = 'k:' .. ARGV[1], tonumber(ARGV[4])
local tat, window, used, rpm, tpd, v = 0, -1, 0, -1, -1, -1
local current = redis.call('HGET', KEYS[1], field)
if current then tat, window, used, rpm, tpd, v = unpack(K_FMT, current) end
if v >= version then return 0 end
redis.call('HSET', KEYS[1], field,
  pack(K_FMT, tat, window, used, tonumber(ARGV[2]), tonumber(ARGV[3]), version))
write_account(read_account(), floor(now_us() / 1000))
return 1
"""

# KEYS: state. ARGV: 'limits', rpm, tpd, version (the account ceiling) or 'status', status code,
# until_ms, version. Both live in the account record, each with its own version.
SET_ACCOUNT = """
local version = tonumber(ARGV[4])
local a = read_account()
local at = ARGV[1] == 'status' and 0 or 3  -- status: a[1..3]; limits: a[4..6]
if a[at + 3] >= version then return 0 end
a[at + 1], a[at + 2], a[at + 3] = tonumber(ARGV[2]), tonumber(ARGV[3]), version
write_account(a, floor(now_us() / 1000))
return 1
"""

# KEYS: state. ARGV: throttle_id, version, then for an apply: key_id ('' = account), ppm,
# expires_ms (0 = none); none for a lift. Throttles: field thr, JSON {id: {k, f, e, v, l}};
# their summary is written to the account record.
THROTTLE = (
    """
local id, version = ARGV[1], tonumber(ARGV[2])
local now_ms = floor(now_us() / 1000)
local raw = redis.call('HGET', KEYS[1], 'thr')
local throttles = raw and cjson.decode(raw) or {}

local function prune()  -- core.prune_throttles
  local lifted = {}
  for tid, th in pairs(throttles) do
    if th.e > 0 and th.e <= now_ms then throttles[tid] = nil
    elseif th.l == 1 then table.insert(lifted, {th.v, tid}) end
  end
  if #lifted > LIFTED_CAP then
    table.sort(lifted, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
    for i = 1, #lifted - LIFTED_CAP do throttles[lifted[i][2]] = nil end
  end
end

prune()
local current = throttles[id]
local applied = 0
if not (current and current.v >= version) then
  applied = 1
  if ARGV[3] then
    throttles[id] = {k = ARGV[3], f = tonumber(ARGV[4]), e = tonumber(ARGV[5]), v = version, l = 0}
  elseif current then
    current.v, current.l = version, 1
  else
    throttles[id] = {k = '', f = PPM, e = 0, v = version, l = 1}
  end
  prune()
end
if next(throttles) == nil then redis.call('HDEL', KEYS[1], 'thr')
else redis.call('HSET', KEYS[1], 'thr', cjson.encode(throttles)) end
local key_id, acct_ppm, thr_until, key_thr, key_ppm = '', PPM, 0, 0, PPM
"""
    + SUMMARIZE
    + """
local a = read_account()
a[7], a[8], a[9] = acct_ppm, thr_until, key_thr
write_account(a, now_ms)
return applied
"""
)


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str


def render(body: str, **constants: int) -> Script:
    """The script with its settings as ``local`` constants, and its SHA1 for EVALSHA."""
    header = "".join(f"local {name} = {int(value)}\n" for name, value in constants.items())
    source = header + PRELUDE + body
    return Script(source, hashlib.sha1(source.encode()).hexdigest())

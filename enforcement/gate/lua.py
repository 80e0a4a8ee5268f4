"""The Redis gate's Lua scripts: the twins of ``core.py`` (read them side by side).

Each script runs atomically, reads the time with ``TIME`` (so every gateway process shares one
clock), and touches only keys of one account, all declared in KEYS under one hash tag. Numbers
are integers below 2**53 (times in µs), exact as Lua doubles; they are written with ``%d``
(64-bit), never with Lua's 14-digit ``tostring``. Settings are prepended as ``local`` constants
by ``render``, so a check sends only the key id and the token count.

The check is the hot path: an allowed request is three commands (TIME, HMGET, HSET), plus a
PEXPIREAT only when the hash's expiry, mirrored in its field ``x``, must move later.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PRELUDE = """
local MINUTE_US, PPM = 60000000, 1000000
local floor, ceil, max, min = math.floor, math.ceil, math.max, math.min
"""

# Helpers for the state scripts (the check inlines what it needs: no closures on the hot path).
HELPERS = """
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
"""

# KEYS: the account's state hash, denial buckets, denied keys. ARGV: key_id, tokens.
# Returns {reason, limit_req, remaining_req, reset_req_ms, limit_tok, remaining_tok,
#          reset_tok_ms, retry_ms, denials_in_window, denied_keys_last_minute}.
CHECK = """
local key_id, tokens = ARGV[1], tonumber(ARGV[2])
local key_field = 'u:' .. key_id
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = floor(now / 1000)
local s = redis.call('HMGET', KEYS[1],
  'st', 'lim:' .. key_id, 'lim', 'thr', 'u', key_field, 'x', 'c')

-- Limits: "rpm|tpd|version", else the defaults.
local key_rpm, key_tpd, acct_rpm, acct_tpd = DEFAULT_RPM, DEFAULT_TPD, DEFAULT_RPM, DEFAULT_TPD
if s[2] then
  local rpm, tpd = string.match(s[2], '^(%d+)|(%d+)|')
  key_rpm, key_tpd = tonumber(rpm), tonumber(tpd)
end
if s[3] then
  local rpm, tpd = string.match(s[3], '^(%d+)|(%d+)|')
  acct_rpm, acct_tpd = tonumber(rpm), tonumber(tpd)
end

-- Throttles: core.throttle_ppm.
local acct_ppm, key_ppm = PPM, PPM
if s[4] then
  for _, th in pairs(cjson.decode(s[4])) do
    if th.l == 0 and (th.e == 0 or now_ms < th.e) then
      if th.k == '' then acct_ppm = min(acct_ppm, th.f)
      elseif th.k == key_id then key_ppm = min(key_ppm, th.f) end
    end
  end
end
key_ppm = min(key_ppm, acct_ppm)
if key_ppm < PPM then  -- throttled (key_ppm <= acct_ppm)
  local function effective(limit, ppm)  -- core.effective, exact for limits below 1e15
    if ppm >= PPM or limit <= 0 then return limit end
    local high = floor(limit / PPM)
    return max(high * ppm + floor((limit - high * PPM) * ppm / PPM), 1)
  end
  key_rpm, key_tpd = effective(key_rpm, key_ppm), effective(key_tpd, key_ppm)
  acct_rpm, acct_tpd = effective(acct_rpm, acct_ppm), effective(acct_tpd, acct_ppm)
end

-- Usage: "tat|window|used", the GCRA theoretical arrival time (µs), the token window's index
-- and the tokens used in it.
local window = floor(now / WINDOW_US)
local window_end = (window + 1) * WINDOW_US
local key_tat, key_used, acct_tat, acct_used, new_window = 0, 0, 0, 0, true
if s[6] then
  local tat, w, used = string.match(s[6], '^(%d+)|(%d+)|(%d+)$')
  key_tat = tonumber(tat)
  if tonumber(w) == window then key_used = tonumber(used) end
end
if s[5] then
  local tat, w, used = string.match(s[5], '^(%d+)|(%d+)|(%d+)$')
  acct_tat = tonumber(tat)
  if tonumber(w) == window then acct_used, new_window = tonumber(used), false end
end

-- Requests, core.request_scope: busy = the part of the minute in use.
local key_interval, acct_interval = ceil(MINUTE_US / key_rpm), ceil(MINUTE_US / acct_rpm)
local key_busy, acct_busy = max(key_tat - now, 0), max(acct_tat - now, 0)
local key_late = key_busy + key_interval - key_interval * key_rpm  -- > 0: denied, wait this
local acct_late = acct_busy + acct_interval - acct_interval * acct_rpm
-- Tokens, core.token_scope.
local need = max(tokens, 1)
local key_short, acct_short = key_used + need > key_tpd, acct_used + need > acct_tpd

-- core.refusal, then core.verdict.
local reason, retry = 0, 0
if s[1] then
  local status, until_ms = string.match(s[1], '^(%a+)|(%d+)|')
  local until_us = tonumber(until_ms) * 1000
  if status == 'terminated' then reason = 4
  elseif status == 'suspended' and until_us == 0 then reason = 3
  elseif status == 'suspended' and now < until_us then reason, retry = 3, until_us - now end
end
if reason == 0 then
  if key_short or acct_short then reason, retry = 2, window_end - now end
  if key_late > 0 or acct_late > 0 then
    if reason == 0 then reason = 1 end
    retry = max(retry, key_late, acct_late)
  end
end

-- Expiry: the hash outlives every TAT in it (at most ~70 s ahead) by USAGE_TTL_MS, the token
-- window while the account has used tokens in it, and configuration by STATE_TTL_MS. Field x
-- mirrors the expiry, so it is renewed only when it falls below `keep`.
local keep, want = now_ms + USAGE_TTL_MS - USAGE_SLACK_MS, now_ms + USAGE_TTL_MS
if s[8] then keep, want = now_ms + STATE_TTL_MS - STATE_SLACK_MS, now_ms + STATE_TTL_MS end
local expires = tonumber(s[7]) or 0

local allowed = reason == 0
local denials, denied_keys = 0, 0
if allowed then
  if new_window then
    -- The account's first request in this window: forget its keys idle since the last one.
    local all = redis.call('HGETALL', KEYS[1])
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 2) == 'u:' and all[i] ~= key_field then
        local tat, w = string.match(all[i + 1], '^(%d+)|(%d+)|')
        if tonumber(w) ~= window and tonumber(tat) <= now then
          redis.call('HDEL', KEYS[1], all[i])
        end
      end
    end
  end
  local acct_next = max(acct_tat, now) + acct_interval
  local key_next = max(key_tat, now) + key_interval
  redis.call('HSET', KEYS[1],
    'u', string.format('%d|%d|%d', acct_next, window, acct_used + tokens),
    key_field, string.format('%d|%d|%d', key_next, window, key_used + tokens))
  if acct_used + tokens > 0 then
    keep, want = max(keep, window_end / 1000), max(want, window_end / 1000)
  end
  if expires < keep then
    redis.call('HSET', KEYS[1], 'x', want)
    redis.call('PEXPIREAT', KEYS[1], want)
  end
else
  if s[8] and expires < keep then
    redis.call('HSET', KEYS[1], 'x', want)
    redis.call('PEXPIREAT', KEYS[1], want)
  end
  if reason <= 2 then
    local bucket = floor(now / BUCKET_US)
    redis.call('HINCRBY', KEYS[2], bucket, 1)
    local all = redis.call('HGETALL', KEYS[2])
    for i = 1, #all, 2 do
      if tonumber(all[i]) > bucket - BUCKETS then denials = denials + tonumber(all[i + 1])
      else redis.call('HDEL', KEYS[2], all[i]) end
    end
    redis.call('PEXPIRE', KEYS[2], (BUCKETS + 1) * BUCKET_US / 1000)
    redis.call('ZADD', KEYS[3], now_ms, key_id)
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms - DENIED_KEYS_MS)
    denied_keys = redis.call('ZCARD', KEYS[3])
    if denied_keys > DENIED_KEYS_CAP then
      redis.call('ZREMRANGEBYRANK', KEYS[3], 0, denied_keys - DENIED_KEYS_CAP - 1)
      denied_keys = DENIED_KEYS_CAP
    end
    redis.call('PEXPIRE', KEYS[3], DENIED_KEYS_MS)
  end
end

-- core.binding: report the scope with less left (after this request if allowed).
local key_left = max(floor((key_interval * key_rpm - key_busy) / key_interval), 0)
local acct_left = max(floor((acct_interval * acct_rpm - acct_busy) / acct_interval), 0)
local key_tok, acct_tok = max(key_tpd - key_used, 0), max(acct_tpd - acct_used, 0)
if allowed then
  key_left, acct_left = key_left - 1, acct_left - 1
  key_busy, acct_busy = key_busy + key_interval, acct_busy + acct_interval
  key_tok, acct_tok = key_tok - tokens, acct_tok - tokens
end
local limit_req, left_req, busy = key_rpm, key_left, key_busy
if acct_left < key_left or (acct_left == key_left and acct_rpm < key_rpm) then
  limit_req, left_req, busy = acct_rpm, acct_left, acct_busy
end
local limit_tok, left_tok = key_tpd, key_tok
if acct_tok < key_tok or (acct_tok == key_tok and acct_tpd < key_tpd) then
  limit_tok, left_tok = acct_tpd, acct_tok
end
return {reason, limit_req, max(left_req, 0), ceil(busy / 1000), limit_tok, max(left_tok, 0),
  ceil((window_end - now) / 1000), ceil(retry / 1000), denials, denied_keys}
"""

# KEYS: denial buckets, denied keys. Returns {denials_in_window, denied_keys_last_minute}.
DENIAL_STATS = """
local now = now_us()
local bucket = floor(now / BUCKET_US)
local all = redis.call('HGETALL', KEYS[1])
local denials = 0
for i = 1, #all, 2 do
  if tonumber(all[i]) > bucket - BUCKETS then denials = denials + tonumber(all[i + 1]) end
end
local horizon = string.format('(%d', floor(now / 1000) - DENIED_KEYS_MS)
return {denials, redis.call('ZCOUNT', KEYS[2], horizon, '+inf')}
"""

# Marks the hash as configured (field c) and keeps it STATE_TTL_MS from now.
CONFIGURED = """
local function configured(now_ms)
  local want = now_ms + STATE_TTL_MS
  redis.call('HSET', KEYS[1], 'c', 1, 'x', want)
  redis.call('PEXPIREAT', KEYS[1], want)
end
"""

# KEYS: state. ARGV: field, value without version, version. An item's value ends in |version.
SET_VERSIONED = """
local field, version = ARGV[1], tonumber(ARGV[3])
local current = redis.call('HGET', KEYS[1], field)
if current and tonumber(string.match(current, '|(%d+)$')) >= version then return 0 end
redis.call('HSET', KEYS[1], field, ARGV[2] .. '|' .. ARGV[3])
configured(floor(now_us() / 1000))
return 1
"""

# KEYS: state. ARGV: throttle_id, version, then for an apply: key_id ('' = account), ppm,
# expires_ms (0 = none); none for a lift. Throttles: field thr, JSON {id: {k, f, e, v, l}}.
THROTTLE = """
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
configured(now_ms)
return applied
"""


@dataclass(frozen=True, slots=True)
class Script:
    source: str
    sha: str


def render(body: str, **constants: int) -> Script:
    """The script with its settings as ``local`` constants, and its SHA1 for EVALSHA."""
    header = "".join(f"local {name} = {int(value)}\n" for name, value in constants.items())
    source = header + PRELUDE + body
    return Script(source, hashlib.sha1(source.encode()).hexdigest())

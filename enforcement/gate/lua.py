"""The Redis gate's Lua scripts: the twins of ``core.py`` (read them side by side).

Each script runs atomically, reads the time with ``TIME`` (so every gateway process shares one
clock), and touches only keys of one account, all declared in KEYS under one hash tag. Numbers
are integers below 2**53 (times in µs), exact as Lua doubles; a number passed to ``redis.call``
is written with 17 significant digits, so exactly. Settings are prepended as ``local`` constants
by ``render``, so a check sends only the key id and the token count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

PRELUDE = """
local MINUTE_US, PPM = 60000000, 1000000
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function effective(limit, ppm)  -- core.effective, exact for limits below 1e15
  if ppm >= PPM then return limit end
  if limit <= 0 then return 0 end
  local high = math.floor(limit / PPM)
  return math.max(high * ppm + math.floor((limit - high * PPM) * ppm / PPM), 1)
end
"""

# KEYS: the account's state hash, denial buckets, denied keys. ARGV: key_id, tokens.
# Returns {reason, limit_req, remaining_req, reset_req_ms, limit_tok, remaining_tok,
#          reset_tok_ms, retry_ms, denials_in_window, denied_keys_last_minute}.
# An allowed check is four commands: TIME, HMGET, HSET, PEXPIREAT.
CHECK = """
local key_id, tokens = ARGV[1], tonumber(ARGV[2])
local key_field = 'u:' .. key_id
local now = now_us()
local now_ms = math.floor(now / 1000)
local state = redis.call('HMGET', KEYS[1],
  'st', 'lim:' .. key_id, 'lim', 'thr', 'u', key_field, 'c')
local configured = state[7]  -- set by every state update: the hash holds configuration

local function limits(packed)
  if not packed then return DEFAULT_RPM, DEFAULT_TPD end
  local rpm, tpd = string.match(packed, '^(%d+)|(%d+)|')
  return tonumber(rpm), tonumber(tpd)
end
local key_rpm, key_tpd = limits(state[2])
local acct_rpm, acct_tpd = limits(state[3])

local acct_ppm, key_ppm = PPM, PPM  -- core.throttle_ppm
if state[4] then
  for _, th in pairs(cjson.decode(state[4])) do
    if th.l == 0 and (th.e == 0 or now_ms < th.e) then
      if th.k == '' then acct_ppm = math.min(acct_ppm, th.f)
      elseif th.k == key_id then key_ppm = math.min(key_ppm, th.f) end
    end
  end
end
key_ppm = math.min(key_ppm, acct_ppm)

-- Usage fields are "tat|window|used": GCRA TAT (µs), token window index, tokens used in it.
local window = math.floor(now / WINDOW_US)
local window_end = (window + 1) * WINDOW_US
local function usage(packed)
  if not packed then return 0, 0 end
  local tat, w, used = string.match(packed, '^(%d+)|(%d+)|(%d+)$')
  if tonumber(w) ~= window then used = 0 end
  return tonumber(tat), tonumber(used)
end
local key_tat, key_used = usage(state[6])
local acct_tat, acct_used = usage(state[5])

-- A scope: {fits, limit, remaining, reset_us, retry_us, cost, reset_cost_us} (core.Scope).
local function request_scope(tat, limit)
  local interval = math.ceil(MINUTE_US / limit)
  local period = interval * limit
  local used = math.max(tat - now, 0)
  local fits = used + interval <= period
  local remaining = math.max(math.floor((period - used) / interval), 0)
  return {fits, limit, remaining, used, fits and 0 or used + interval - period, 1, interval}
end
local function token_scope(used, limit)
  local fits = used + math.max(tokens, 1) <= limit
  local reset = window_end - now
  return {fits, limit, math.max(limit - used, 0), reset, fits and 0 or reset, tokens, 0}
end
local kr = request_scope(key_tat, effective(key_rpm, key_ppm))
local ar = request_scope(acct_tat, effective(acct_rpm, acct_ppm))
local kt = token_scope(key_used, effective(key_tpd, key_ppm))
local at = token_scope(acct_used, effective(acct_tpd, acct_ppm))

local reason, retry = 0, 0  -- core.refusal, core.verdict
if state[1] then
  local status, until_ms = string.match(state[1], '^(%a+)|(%d+)|')
  local until_us = tonumber(until_ms) * 1000
  if status == 'terminated' then reason = 4
  elseif status == 'suspended' and until_us == 0 then reason = 3
  elseif status == 'suspended' and now < until_us then reason, retry = 3, until_us - now end
end
if reason == 0 then
  for _, s in ipairs({kt, at}) do
    if not s[1] then reason = 2; retry = math.max(retry, s[5]) end
  end
  for _, s in ipairs({kr, ar}) do
    if not s[1] then
      if reason == 0 then reason = 1 end
      retry = math.max(retry, s[5])
    end
  end
end

-- The hash outlives every TAT in it (at most a period, ~60 s, ahead), the token window while
-- the account used tokens in it, and configuration by STATE_TTL_MS (>= the window).
local expire_ms = now_ms + USAGE_TTL_MS
if configured then expire_ms = now_ms + STATE_TTL_MS end
local denials, denied_keys = 0, 0
if reason == 0 then
  if not state[5] or not string.find(state[5], '|' .. window .. '|', 1, true) then
    -- The account's first request in this window: forget keys idle since the last one.
    local all = redis.call('HGETALL', KEYS[1])
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 2) == 'u:' then
        local tat, w = string.match(all[i + 1], '^(%d+)|(%d+)|')
        if tonumber(w) ~= window and tonumber(tat) <= now then
          redis.call('HDEL', KEYS[1], all[i])
        end
      end
    end
  end
  local function packed(tat, limit, used)
    local new_tat = math.max(tat, now) + math.ceil(MINUTE_US / limit)
    return string.format('%.0f|%.0f|%.0f', new_tat, window, used + tokens)
  end
  redis.call('HSET', KEYS[1], 'u', packed(acct_tat, ar[2], acct_used),
    key_field, packed(key_tat, kr[2], key_used))
  if acct_used + tokens > 0 then expire_ms = math.max(expire_ms, window_end / 1000) end
  redis.call('PEXPIREAT', KEYS[1], expire_ms)
else
  if configured then redis.call('PEXPIREAT', KEYS[1], expire_ms) end
  if reason <= 2 then
    local bucket = math.floor(now / BUCKET_US)
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

local function binding(k, a)  -- core.binding
  local k_rem, a_rem, k_reset, a_reset = k[3], a[3], k[4], a[4]
  if reason == 0 then
    k_rem, a_rem = k_rem - k[6], a_rem - a[6]
    k_reset, a_reset = k_reset + k[7], a_reset + a[7]
  end
  if a_rem < k_rem or (a_rem == k_rem and a[2] < k[2]) then
    return a[2], math.max(a_rem, 0), math.ceil(a_reset / 1000)
  end
  return k[2], math.max(k_rem, 0), math.ceil(k_reset / 1000)
end
local rl, rr, rs = binding(kr, ar)
local tl, tr, ts = binding(kt, at)
return {reason, rl, rr, rs, tl, tr, ts, math.ceil(retry / 1000), denials, denied_keys}
"""

# KEYS: denial buckets, denied keys. Returns {denials_in_window, denied_keys_last_minute}.
DENIAL_STATS = """
local now = now_us()
local bucket = math.floor(now / BUCKET_US)
local all = redis.call('HGETALL', KEYS[1])
local denials = 0
for i = 1, #all, 2 do
  if tonumber(all[i]) > bucket - BUCKETS then denials = denials + tonumber(all[i + 1]) end
end
local horizon = string.format('(%.0f', math.floor(now / 1000) - DENIED_KEYS_MS)
return {denials, redis.call('ZCOUNT', KEYS[2], horizon, '+inf')}
"""

# KEYS: state. ARGV: field, value without version, version. An item's value ends in |version.
SET_VERSIONED = """
local field, version = ARGV[1], tonumber(ARGV[3])
local current = redis.call('HGET', KEYS[1], field)
if current and tonumber(string.match(current, '|(%d+)$')) >= version then return 0 end
redis.call('HSET', KEYS[1], field, ARGV[2] .. '|' .. ARGV[3], 'c', 1)
redis.call('PEXPIRE', KEYS[1], STATE_TTL_MS)
return 1
"""

# KEYS: state. ARGV: throttle_id, version, then for an apply: key_id ('' = account), ppm,
# expires_ms (0 = none); none for a lift. Throttles: field thr, JSON {id: {k, f, e, v, l}}.
THROTTLE = """
local id, version = ARGV[1], tonumber(ARGV[2])
local now_ms = math.floor(now_us() / 1000)
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
redis.call('HSET', KEYS[1], 'c', 1)
redis.call('PEXPIRE', KEYS[1], STATE_TTL_MS)
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

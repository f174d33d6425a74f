"""Lua scripts for the job state transitions that must be atomic.

Each script touches one job's two keys (``P:job:{ID}`` and ``P:job:{ID}:events``), which share a hash
slot, so they run unchanged on Redis Cluster. Event stream ids are explicit ``<attempt>-<seq>``:
an attempt's ``start`` is ``<attempt>-0``, its n-th token ``<attempt>-<n>``. Redis itself then refuses
any write from a superseded attempt once a newer one has started (ids must grow), and a write retried
after a lost reply fails instead of duplicating the event.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACK",
    "BEGIN",
    "BUDGET_ACQUIRE",
    "BUDGET_RELEASE",
    "BUDGET_RENEW",
    "BUDGET_THROTTLE",
    "CANCEL",
    "DEAD",
    "ENQUEUE",
    "FAIL",
    "FINISH",
    "HANDBACK",
    "REAP",
    "RECORD_ENTRY",
    "REDRIVE",
    "RENEW",
    "REVIEW_ADD",
    "REVIEW_RESOLVE",
    "TERMINAL_SEQ",
]

TERMINAL_SEQ: Final = 2**64 - 1
"""The sequence part of the id of a terminal event written by anyone but the attempt's own writer
(a dead letter, a cancellation found at pickup, a queued job's cancel): ``<attempt>-18446744073709551615``,
the highest id of its attempt. Redis then refuses every later write of that attempt or an earlier
one (ids must grow), so a stale owner resumed after it cannot append a single event: the terminal
fences every attempt by Redis's own id ordering, with no cost on the token path. (An attempt's own
``done``/``error``/``cancelled`` is written by :data:`FINISH` at ``<attempt>-<tokens + 1>``, after
everything that attempt wrote; no other writer of that attempt exists.)"""

# Create a job's state hash unless it exists. A new job keeps the digest of its canonical payload
# (`job_sha256`); an existing one whose kept digest differs from this one is a conflict: another job
# under the same id. (No digest kept, e.g. a job a worker created from a raw XADD: no comparison.)
# KEYS: state. ARGV: now_ms, ttl_ms, model, api, provider, digest ('' to keep none), tenant (the
# gateway's tenant that enqueued it, recorded as `tenant`; '' or absent for none).
# Returns {"new", "queued", ""} | {"exists", state, entry} | {"conflict", state, entry}, or, for a
# tenant's job whose id names a job that is not that tenant's (one enqueued outside the gateway),
# {"foreign", state, entry}.
ENQUEUE: Final = """
local state = redis.call('HGET', KEYS[1], 'state')
if state then
  local entry = redis.call('HGET', KEYS[1], 'entry') or ''
  if ARGV[7] and ARGV[7] ~= '' and redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[7] then
    return {'foreign', state, entry}
  end
  local digest = redis.call('HGET', KEYS[1], 'job_sha256')
  if digest and ARGV[6] ~= '' and digest ~= ARGV[6] then return {'conflict', state, entry} end
  return {'exists', state, entry}
end
redis.call('HSET', KEYS[1], 'state', 'queued', 'attempt', 0, 'created', ARGV[1],
           'model', ARGV[3], 'api', ARGV[4], 'provider', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'job_sha256', ARGV[6]) end
if ARGV[7] and ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'tenant', ARGV[7]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'new', 'queued', ''}
"""

# KEYS: state, events. ARGV: entry_id, consumer, now_ms, ttl_ms, maxlen, start_head, start_tail,
# model, api, provider, replaced_entry (the entry a drain hand-back replaced, or ''), hand-back token.
# A job owned by another entry moves to this one only when it is the hand-back its owner recorded
# (HANDBACK: the entry and the sha1 of the token this entry carries); a producer's raw `replaces`
# field cannot move, restart or fence a running job. A start clears the token: it is used once.
# Returns {"started", attempt} | {"terminal", state} | {"duplicate", owning_entry} | {"cancel", reason}.
BEGIN: Final = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'error' or state == 'cancelled' then
  return {'terminal', state}
end
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry and entry ~= ARGV[1] then
  local handback = redis.call('HGET', KEYS[1], 'handback')
  if not (entry == ARGV[11] and ARGV[12] ~= '' and handback == redis.sha1hex(ARGV[12])) then
    return {'duplicate', entry}
  end
end
local cancel = redis.call('HGET', KEYS[1], 'cancel')
if cancel then return {'cancel', cancel} end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0') + 1
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #top > 0 then
  local ms, seq = string.match(top[1][1], '^(%d+)-(%d+)$')
  if seq == '18446744073709551615' then return {'terminal', state or 'ended'} end
  ms = tonumber(ms)
  if ms >= attempt then attempt = ms + 1 end
end
redis.call('HSET', KEYS[1], 'state', 'running', 'attempt', attempt, 'entry', ARGV[1],
           'owner', ARGV[2], 'started', ARGV[3], 'model', ARGV[8], 'api', ARGV[9],
           'provider', ARGV[10])
redis.call('HSETNX', KEYS[1], 'created', ARGV[3])
redis.call('HDEL', KEYS[1], 'handback')
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], attempt .. '-0',
           'event', ARGV[6] .. attempt .. ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return {'started', attempt}
"""

# The terminal event of a running attempt, fenced on the attempt number.
# KEYS: state, events. ARGV: attempt, event_id, event_json, state_name, now_ms, ttl_ms, maxlen,
# then field/value pairs to record on the state hash.
# Returns "ok" | "dup" (this very terminal was already written) | "fenced".
FINISH: Final = """
local attempt = redis.call('HGET', KEYS[1], 'attempt')
local state = redis.call('HGET', KEYS[1], 'state')
if attempt ~= ARGV[1] then return 'fenced' end
if state ~= 'running' then
  if state == ARGV[4] and redis.call('HGET', KEYS[1], 'terminal_id') == ARGV[2] then return 'dup' end
  return 'fenced'
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], ARGV[2], 'event', ARGV[3])
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'finished', ARGV[5], 'terminal_id', ARGV[2])
for i = 8, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 'ok'
"""

# A terminal event for a job that has no live attempt of this entry to fence on: an invalid payload
# whose id was readable, a dead letter, a cancellation found at pickup, a deleted entry. It never
# touches a job owned by another entry. Written at <attempt>-TERMINAL_SEQ, above every id of the
# job's attempts: a stale owner still alive can write nothing after it.
# KEYS: state, events. ARGV: entry_id ('' when unknown), head, tail, state_name, now_ms, ttl_ms,
# maxlen, code.
# Returns "ok" | "terminal" | "foreign".
FAIL: Final = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'done' or state == 'error' or state == 'cancelled' then return 'terminal' end
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry and entry ~= ARGV[1] then return 'foreign' end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #top > 0 then
  local ms, seq = string.match(top[1][1], '^(%d+)-(%d+)$')
  if seq == '18446744073709551615' then return 'terminal' end
  ms = tonumber(ms)
  if ms > attempt then attempt = ms end
end
if attempt < 1 then attempt = 1 end
local id = attempt .. '-18446744073709551615'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], id, 'event', ARGV[2] .. attempt .. ARGV[3])
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'finished', ARGV[5], 'attempt', attempt,
           'terminal_id', id, 'error_code', ARGV[8])
if ARGV[1] ~= '' then redis.call('HSETNX', KEYS[1], 'entry', ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 'ok'
"""

# A drain's hand-back of a job's entry: record on the job's state hash the sha1 of the token its new
# entry carries (BEGIN honours that entry's `replaces` only with it), while the job is this entry's.
# KEYS: state. ARGV: entry id, sha1 hex of the token. Returns 1 if recorded.
HANDBACK: Final = """
if redis.call('HGET', KEYS[1], 'entry') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'handback', ARGV[2])
return 1
"""

# Renew the lease of every entry this consumer still owns: an owner-checked XCLAIM with min-idle 0
# and JUSTID resets the entry's idle time without counting a delivery. An entry pending to another
# consumer is lost (that worker owns the job now). An entry no longer in the stream (XDEL, XTRIM; or
# acknowledged and deleted by a peer that finished the job) is gone: it is not claimed (XCLAIM of a
# deleted entry silently drops it from the pending list, and the job with it), its holder ends the
# job (a terminal written only if the job is still its own). An entry in the stream but pending to
# nobody (an operator's XACK or XGROUP DELCONSUMER, a group destroyed and created again) is neither:
# no consumer can claim it and the group has delivered past it, so no one else will run the job
# unless the group delivers the entry again, and that delivery's start fences this attempt. The job
# goes on without a lease (none can be taken on such an entry); its ack deletes the entry.
# KEYS: jobs stream. ARGV: group, consumer, entry ids... Returns {lost ids, gone ids}.
RENEW: Final = """
local lost, gone = {}, {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #p > 0 and p[1][2] ~= ARGV[2] then
    lost[#lost + 1] = id
  elseif #redis.call('XRANGE', KEYS[1], id, id) == 0 then
    gone[#gone + 1] = id
  elseif #p > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'JUSTID')
  end
end
return {lost, gone}
"""

# Record the job stream entry that carries a job, only on a state hash that exists (a hash expired or
# flushed since it was created is never re-created without its TTL: BEGIN creates it anew).
# KEYS: state. ARGV: entry id. Returns 1 if recorded.
RECORD_ENTRY: Final = """
if not redis.call('HGET', KEYS[1], 'state') then return 0 end
return redis.call('HSETNX', KEYS[1], 'entry', ARGV[1])
"""

# Remove a consumer only if it owns nothing (checked and done atomically).
# KEYS: jobs stream. ARGV: group, consumer. Returns 1 if removed.
REAP: Final = """
local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2])
if #p > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# Cancel a job: a queued job ends at once with `cancelled` (at the fencing id <attempt>-TERMINAL_SEQ);
# a running one is flagged (`cancel`, the authority its worker checks when told over pub/sub).
# KEYS: state, events. ARGV: reason, head, tail, now_ms, ttl_ms, maxlen.
# Returns {"cancelled"} | {"requested"} | {"terminal", state} | {"unknown"}.
CANCEL: Final = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'unknown'} end
if state == 'done' or state == 'error' or state == 'cancelled' then return {'terminal', state} end
redis.call('HSET', KEYS[1], 'cancel', ARGV[1])
if state ~= 'queued' then return {'requested'} end
local attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
if attempt < 1 then attempt = 1 end
local id = attempt .. '-18446744073709551615'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], id, 'event', ARGV[2] .. attempt .. ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'cancelled', 'finished', ARGV[4], 'terminal_id', id)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {'cancelled'}
"""

# Acknowledge a job stream entry and delete it (acknowledged entries do not pile up).
# KEYS: jobs stream. ARGV: group, entry id.
ACK: Final = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
"""

# Move an entry to the dead-letter stream and acknowledge it, atomically (same hash slot).
# KEYS: jobs stream, dead stream. ARGV: group, entry id, maxlen, then field/value pairs.
DEAD: Final = """
local fields = {}
for i = 4, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return id
"""

# Put a job on the review stream once: the job's marker (same {P} slot) records the entry, and a
# second call (a retried write, a takeover that found the done written) returns that entry instead.
# KEYS: review stream, marker. ARGV: maxlen, marker ttl_ms, job_id, model, signals, item.
# Returns the entry's id.
REVIEW_ADD: Final = """
local entry = redis.call('HGET', KEYS[2], 'entry')
if entry then return entry end
entry = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'job_id', ARGV[3], 'model', ARGV[4],
                   'signals', ARGV[5], 'item', ARGV[6])
redis.call('HSET', KEYS[2], 'entry', entry)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return entry
"""

# Resolve a review entry: mark the job's marker resolved (a marker that expired is made again, with
# the entry's id and a TTL: never a marker without one) and acknowledge the entry in the group (a
# no-op for one nobody took). KEYS: review stream, marker. ARGV: group, entry id, resolution,
# now_ms, marker ttl_ms. Returns XACK's count.
REVIEW_RESOLVE: Final = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'entry', ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
end
redis.call('HSET', KEYS[2], 'resolved', ARGV[3], 'resolved_at', ARGV[4])
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"""

# Move a dead letter back onto the job stream, atomically (both keys are in the {P} slot): the new
# entry exists exactly when the dead letter is gone, however a re-drive is interrupted.
# KEYS: jobs stream, dead stream. ARGV: dead-letter id, job payload.
# Returns the new entry's id, or false when the dead letter no longer exists.
REDRIVE: Final = """
if #redis.call('XRANGE', KEYS[2], ARGV[1], ARGV[1]) == 0 then return false end
local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[1])
return id
"""

# --- shared provider budgets (worker.ratelimit) -------------------------------------------------
# One budget scope (a provider, or a provider's model) owns four keys under one hash tag (one slot):
# state (hash: AIMD `limit` and `factor`, `blocked` until, `cut` time, the request and token buckets
# `rl`/`rts` and `tl`/`tts`, the fairness `hold`, counters), slots (zset: ticket -> lease expiry ms),
# queue (zset: ticket -> arrival number, the FIFO of waiting requests), waiters (hash: ticket -> expiry
# ms). Time is Redis's own (TIME), so workers' clocks never disagree. Buckets hold one sixth of the
# per-minute amount (ten seconds' worth) and refill continuously; both and the concurrency limit
# scale with the AIMD state. Numbers travel as strings (Lua floats would be truncated in replies).
# A token bucket lies in 0..cap: `clamp` floors it (a settle that used more than it reserved empties
# the bucket, never overdraws it, so no report makes anyone wait longer than a refill of the whole
# bucket, ten seconds) and takes a stored value that is no number (NaN, garbage) as full. Wait
# hints are rendered by `ms` as integers (`%d` of a bounded value: never `9.9e+14`).
_BUDGET_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function clamp(l, cap)
  if l ~= l then return cap end
  if l > cap then return cap end
  if l < 0 then return 0 end
  return l
end
local function level(value, ts, cap, rate)
  local v, at = tonumber(value), tonumber(ts)
  if not v or not at then return cap end
  return clamp(v + math.max(0, now - at) * rate, cap)
end
local function ms(wait)
  if wait ~= wait or wait < 0 then return '0' end
  if wait > 3600000 then wait = 3600000 end
  return string.format('%d', math.ceil(wait))
end
local function expire(ttl)
  for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
end
"""

# Ask for a budget: a concurrency slot (leased until now + slot_ttl), one request and `cost` tokens.
# A request waits in the FIFO queue; only the first ones (twice the free slots) may take a slot, and
# when the first is short of rate budget it holds the rate budget for itself (nobody overtakes it).
# KEYS: state, slots, queue, waiters. ARGV: ticket, slot_ttl_ms, waiter_ttl_ms, max_concurrency
# (0: none), requests_per_minute (0: none), tokens_per_minute (0: none), cost, key_ttl_ms.
# Returns {granted 0|1, wait_ms hint (0: unknown), reason, limit ('' unbounded), in_use, waiting,
# now_ms, reserved tokens, rate factor}. reason: granted | retry_after | concurrency | fairness | rate.
BUDGET_ACQUIRE: Final = (
    _BUDGET_PRELUDE
    + """
local ticket = ARGV[1]
local maxc, rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local cost = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if not redis.call('ZSCORE', KEYS[3], ticket) then
  redis.call('ZADD', KEYS[3], redis.call('HINCRBY', KEYS[1], 'seq', 1), ticket)
end
redis.call('HSET', KEYS[4], ticket, now + tonumber(ARGV[3]))
for i = 1, 32 do
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if not head then break end
  if tonumber(redis.call('HGET', KEYS[4], head) or '0') >= now then break end
  redis.call('ZREM', KEYS[3], head)
  redis.call('HDEL', KEYS[4], head)
end
local f = redis.call('HMGET', KEYS[1], 'limit', 'factor', 'blocked', 'hold', 'hold_exp',
                     'rl', 'rts', 'tl', 'tts')
local limit = tonumber(f[1])
if maxc > 0 and (limit == nil or limit > maxc) then limit = maxc end
local factor = tonumber(f[2]) or 1
local inuse = redis.call('ZCARD', KEYS[2])
local waiting = redis.call('ZCARD', KEYS[3])
local shown = limit and tostring(limit) or ''
local ttl = tonumber(ARGV[8])
local function refuse(wait, why)
  expire(ttl)
  return {0, ms(wait), why, shown, inuse, waiting, now, '0', tostring(factor)}
end
local blocked = tonumber(f[3]) or 0
if blocked > now then return refuse(blocked - now, 'retry_after') end
local rank = redis.call('ZRANK', KEYS[3], ticket)
if limit then
  local free = math.max(1, math.floor(limit)) - inuse
  if rank >= 2 * free then return refuse(0, 'concurrency') end
end
local hold = f[4]
if hold and hold ~= ticket and tonumber(f[5] or '0') > now and redis.call('ZSCORE', KEYS[3], hold) then
  return refuse(0, 'fairness')
end
local wait, rl, tl = 0, nil, nil
if rpm > 0 then
  local cap, rate = math.max(1, rpm * factor / 6), rpm * factor / 60000
  rl = level(f[6], f[7], cap, rate)
  if rl < 1 then wait = math.max(wait, (1 - rl) / rate) end
end
if tpm > 0 then
  local cap, rate = math.max(1, tpm * factor / 6), tpm * factor / 60000
  if cost > cap then cost = cap end
  tl = level(f[8], f[9], cap, rate)
  if tl < cost then wait = math.max(wait, (cost - tl) / rate) end
end
if wait > 0 then
  if rank == 0 then
    redis.call('HSET', KEYS[1], 'hold', ticket, 'hold_exp', now + math.ceil(wait) + tonumber(ARGV[3]))
  end
  return refuse(wait, 'rate')
end
if rl then redis.call('HSET', KEYS[1], 'rl', tostring(rl - 1), 'rts', now) end
if tl then redis.call('HSET', KEYS[1], 'tl', tostring(tl - cost), 'tts', now) else cost = 0 end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ticket)
redis.call('ZREM', KEYS[3], ticket)
redis.call('HDEL', KEYS[4], ticket)
if hold == ticket then redis.call('HDEL', KEYS[1], 'hold', 'hold_exp') end
redis.call('HINCRBY', KEYS[1], 'granted', 1)
expire(ttl)
return {1, '0', 'granted', shown, inuse + 1, waiting - 1, now, tostring(cost), tostring(factor)}
"""
)

# Settle a request: free its slot (or its place in the queue, when it stops waiting), give back
# the tokens it reserved but did not use (a negative refund takes more, down to an empty bucket),
# and on success grow the budget additively (the concurrency limit by 1/limit per success, about
# one per round of the limit; the rate factor by RATE_STEP), up to the configured limit (where the
# AIMD state is dropped: back to the setting).
# KEYS: state, slots, queue, waiters. ARGV: ticket, outcome (ok | fail), refund, max_concurrency,
# tokens_per_minute, key_ttl_ms, rate step. Returns {limit ('' unbounded), in_use, waiting, factor}.
BUDGET_RELEASE: Final = (
    _BUDGET_PRELUDE
    + """
local maxc, tpm, refund = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[3]) or 0
if refund ~= refund then refund = 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local f = redis.call('HMGET', KEYS[1], 'limit', 'factor', 'tl', 'tts')
local factor = tonumber(f[2]) or 1
if tpm > 0 and refund ~= 0 then
  local cap, rate = math.max(1, tpm * factor / 6), tpm * factor / 60000
  local tl = clamp(level(f[3], f[4], cap, rate) + refund, cap)
  redis.call('HSET', KEYS[1], 'tl', tostring(tl), 'tts', now)
end
local limit = tonumber(f[1])
if ARGV[2] == 'ok' then
  if limit then
    limit = limit + 1 / math.max(1, limit)
    if maxc > 0 and limit >= maxc then
      redis.call('HDEL', KEYS[1], 'limit')
      limit = maxc
    else
      redis.call('HSET', KEYS[1], 'limit', tostring(limit))
    end
  end
  if f[2] then
    factor = factor + tonumber(ARGV[7])
    if factor >= 1 then redis.call('HDEL', KEYS[1], 'factor') else
      redis.call('HSET', KEYS[1], 'factor', tostring(factor)) end
  end
end
if maxc > 0 and (limit == nil or limit > maxc) then limit = maxc end
expire(tonumber(ARGV[6]))
return {limit and tostring(limit) or '', redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]),
        tostring(factor)}
"""
)

# A granted request was refused by the provider (HTTP 429): free its slot, give back its tokens,
# pause the scope until Retry-After, and cut the budget multiplicatively: the concurrency limit to
# beta x min(limit, slots in use), the rate factor to beta x factor (at least MIN_FACTOR). Only
# once per round: a request granted before the last cut (or in its millisecond) does not cut again
# (its 429 answers the old budget).
# KEYS: state, slots, queue, waiters. ARGV: ticket, granted_ms, retry_after_ms (0: none),
# max_concurrency, tokens_per_minute, refund, key_ttl_ms, beta, min factor.
# Returns {cut 0|1, limit, blocked_ms (0: not paused)}.
BUDGET_THROTTLE: Final = (
    _BUDGET_PRELUDE
    + """
local maxc, tpm = tonumber(ARGV[4]), tonumber(ARGV[5])
local beta = tonumber(ARGV[8])
local inuse = redis.call('ZCARD', KEYS[2])
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then inuse = inuse + 1 end
redis.call('HINCRBY', KEYS[1], 'throttled', 1)
local f = redis.call('HMGET', KEYS[1], 'limit', 'factor', 'cut', 'blocked', 'tl', 'tts')
local factor = tonumber(f[2]) or 1
local blocked = tonumber(f[4]) or 0
local ra = tonumber(ARGV[3])
if ra > 0 and now + ra > blocked then
  blocked = now + ra
  redis.call('HSET', KEYS[1], 'blocked', blocked)
end
local limit = tonumber(f[1])
if maxc > 0 and (limit == nil or limit > maxc) then limit = maxc end
local cut = 0
if tonumber(ARGV[2]) > (tonumber(f[3]) or 0) then
  local base = inuse
  if limit and limit < base then base = limit end
  limit = math.max(1, base * beta)
  factor = math.max(tonumber(ARGV[9]), factor * beta)
  redis.call('HSET', KEYS[1], 'limit', tostring(limit), 'factor', tostring(factor), 'cut', now)
  cut = 1
end
local refund = tonumber(ARGV[6]) or 0
if refund ~= refund then refund = 0 end
if tpm > 0 and refund ~= 0 then
  local cap, rate = math.max(1, tpm * factor / 6), tpm * factor / 60000
  local tl = clamp(level(f[5], f[6], cap, rate) + refund, cap)
  redis.call('HSET', KEYS[1], 'tl', tostring(tl), 'tts', now)
end
expire(tonumber(ARGV[7]))
local left = 0
if blocked > now then left = blocked - now end
return {cut, limit and tostring(limit) or '', left}
"""
)

# Extend the slot leases of requests still running (a crashed worker stops doing this, and its
# slots free themselves when their lease ends; an expired one is not re-added). KEYS: slots.
# ARGV: slot_ttl_ms, key_ttl_ms, tickets... Returns the number of tickets renewed.
BUDGET_RENEW: Final = """
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local n = 0
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], until_ms, ARGV[i])
    n = n + 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"""

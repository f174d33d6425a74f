"""``tokenwire stats``: what an operator asks first: queue length, pending, consumers, lag, dead."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from .keys import GROUP, Keys, as_text
from .ratelimit import collect_budgets

__all__ = ["collect_stats", "format_stats"]


async def collect_stats(redis: Redis, prefix: str, *, budgets: bool = False) -> dict[str, Any]:
    """With ``budgets``, also every provider budget scope in use (worker.ratelimit)."""
    keys = Keys(prefix)
    if budgets:
        listed = await collect_budgets(redis, keys)
        stats = await collect_stats(redis, prefix)
        return {**stats, "budgets": listed}
    out: dict[str, Any] = {
        "stream": keys.jobs,
        "group": GROUP,
        "length": await redis.xlen(keys.jobs),
        "dead_letters": await redis.xlen(keys.dead),
        "group_exists": False,
        "pending": 0,
        "lag": None,
        "consumers": [],
    }
    try:
        groups = await redis.xinfo_groups(keys.jobs)
    except NoPermissionError:  # not "no group yet": the user may not look (worker.roles)
        raise
    except ResponseError:  # no such stream yet
        return out
    for group in groups:
        if as_text(group["name"]) != GROUP:
            continue
        out["group_exists"] = True
        out["pending"] = int(group["pending"])
        out["lag"] = group.get("lag")
        consumers = await redis.xinfo_consumers(keys.jobs, GROUP)
        out["consumers"] = [
            {
                "name": as_text(c["name"]),
                "pending": int(c["pending"]),
                "idle_ms": int(c["idle"]),
                "inactive_ms": int(c["inactive"]) if c.get("inactive") is not None else None,
            }
            for c in consumers
        ]
    return out


def format_stats(stats: dict[str, Any]) -> str:
    lag = "n/a" if stats["lag"] is None else str(stats["lag"])
    lines = [
        f"stream        {stats['stream']}",
        f"length        {stats['length']}",
        f"group         {stats['group']}{'' if stats['group_exists'] else ' (not created yet)'}",
        f"lag           {lag}",
        f"pending       {stats['pending']}",
        f"dead letters  {stats['dead_letters']}",
        f"consumers     {len(stats['consumers'])}",
    ]
    for c in stats["consumers"]:
        lines.append(f"  {c['name']:<40} pending {c['pending']:>5}  idle {c['idle_ms'] / 1000:.1f}s")
    if "budgets" in stats:
        lines.append(f"budgets       {len(stats['budgets'])}")
    for b in stats.get("budgets", ()):
        limit = "as configured" if b["limit"] is None else f"{b['limit']:.1f}"
        paused = f"  paused {b['paused_ms'] / 1000:.1f}s" if b["paused_ms"] else ""
        lines.append(
            f"  {b['scope']:<40} in use {b['in_use']:>4}  waiting {b['waiting']:>4}  limit {limit}"
            f"  rate x{b['factor']:.2f}  429s {b['throttled']}{paused}"
        )
    return "\n".join(lines)

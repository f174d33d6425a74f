"""The gateway on a real three-master Redis Cluster: each job's keys have their own slot, so the hub
reads by a pipeline of one XREAD per key, grouped by node (worker/gateway/hub.py). The same tests
as on a single server (imported from test_gateway.py, run here with ``backend = "cluster"``)."""

from __future__ import annotations

import pytest

from .test_gateway import (  # noqa: F401 (fixtures and tests collected again, on the cluster)
    http,
    test_events_are_the_stored_entries_exactly_then_the_stream_closes,
    test_many_watchers_of_one_job_share_one_read,
    test_max_inflight_jobs_is_counted_in_redis_across_gateways,
    test_resume_after_last_event_id_or_after_gets_exactly_the_rest,
    test_status_and_cancel,
    test_tenant_b_cannot_see_as_job_by_key_or_token_and_its_own_id_is_its_own,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def backend() -> str:
    return "cluster"

"""Which `/services/...` keys the etcd side puts, renews and drops for the registrations."""

from __future__ import annotations

from typing import Any

from treeherd.core.edge.registry_keys import KeyState, plan_keys, registry_key, wanted_keys
from treeherd.model.discovery import Endpoint
from treeherd.testing import factories as f


def endpoint(address: str = "10.0.0.5", port: int = 8080, **fields: Any) -> Endpoint:
    values: dict[str, Any] = {"service": "apache", "host": "core-01", "ttl_s": 30.0, **fields}
    return Endpoint(
        id=f"{address}:{port}",
        created_at=f.FIXED_NOW,
        updated_at=f.FIXED_NOW,
        address=address,
        port=port,
        **values,
    )


def test_a_key_per_ipv4_registration_with_the_seeds_value() -> None:
    wanted = wanted_keys([(endpoint(), 100.0), (endpoint("::1", 80), 100.0), (endpoint(ttl_s=2.5), 50.0)])
    assert list(wanted) == ["/services/apache/10.0.0.5:8080"]
    state = wanted[registry_key(endpoint())]
    assert state.value == b'{"host":"core-01","ipv4_addr":"10.0.0.5","port":8080}'
    assert (state.ttl_s, state.due) == (3, 50.0)  # the TTL rounded up to whole seconds, as etcd takes it


def test_new_keys_are_put_refreshed_ones_renewed_gone_ones_dropped() -> None:
    held = wanted_keys([(endpoint(port=1), 100.0), (endpoint(port=2), 100.0), (endpoint(port=3), 100.0)])
    now = wanted_keys(
        [
            (endpoint(port=1), 100.2),  # not refreshed (a deadline read again a moment later)
            (endpoint(port=2), 110.0),  # refreshed
            (endpoint(port=4), 130.0),  # new
        ]
    )
    plan = plan_keys(now, held)
    assert plan.put == ["/services/apache/10.0.0.5:4"]
    assert plan.renew == ["/services/apache/10.0.0.5:2"]
    assert plan.drop == ["/services/apache/10.0.0.5:3"]
    assert plan_keys(now, now).put == plan_keys(now, now).renew == plan_keys(now, now).drop == []


def test_a_changed_value_or_ttl_is_put_again() -> None:
    held = {"/services/apache/10.0.0.5:8080": KeyState(value=b"{}", ttl_s=30, due=100.0)}
    assert plan_keys(wanted_keys([(endpoint(), 100.0)]), held).put == ["/services/apache/10.0.0.5:8080"]
    same_value = wanted_keys([(endpoint(), 100.0)])
    longer = wanted_keys([(endpoint(ttl_s=60.0), 100.0)])
    assert plan_keys(longer, same_value).put == ["/services/apache/10.0.0.5:8080"]

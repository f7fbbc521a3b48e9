"""The Lium target, with the real Lium SDK talking HTTP to a local fake of the Lium API."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.lium import (
    LiumSettings,
    execute_pod_delete,
    execute_pod_up,
    parse_volume,
    plan_pod_delete,
    plan_pod_up,
    resolve_target,
)
from helpers.lium_api import base_url_of
from helpers.pod.errors import ExitCode, WorkflowError
from tests.fake_lium_api import A100, H100, FakeLiumAPI

API_KEY = "lium-test-key-0123456789abcdefSECRET"
PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3Qta2V5LWZvci13b3JrZmxvdy1zaC10ZXN0cw== test@workflow"


class Env:
    """One test's world: a fake API, a tmp HOME, a key pair, cache and known_hosts locations."""

    def __init__(self, api: FakeLiumAPI, tmp: Path) -> None:
        self.api = api
        self.key = tmp / "keys" / "id_ed25519"
        self.key.parent.mkdir()
        self.key.write_text("not a real private key\n")
        self.key.with_name("id_ed25519.pub").write_text(PUBLIC_KEY + "\n")
        self.cache = tmp / "state" / "lium_targets.json"
        self.known_hosts = tmp / "state" / "known_hosts"
        self.errors: list[str] = []  # every error text a test saw, checked for the key at teardown

    def settings(self, **overrides: object) -> LiumSettings:
        base = LiumSettings(
            api_key=API_KEY,
            base_url=self.api.base_url,
            ssh_key_path=str(self.key),
            ready_timeout_secs=10,
        )
        return replace(base, **overrides)  # type: ignore[arg-type]

    def fails(self, code: int, fn: object, *args: object, **kwargs: object) -> str:
        with pytest.raises(WorkflowError) as info:
            fn(*args, **kwargs)  # type: ignore[operator]
        message = str(info.value)
        self.errors.append(message)
        assert info.value.code == code, message
        assert "\n" not in message
        return message

    def resolve_fails(self, code: int, target: str) -> str:
        return self.fails(code, resolve_target, self.settings(target=target), self.cache, self.known_hosts)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("LIUM_API_KEY", "LIUM_API_API_KEY", "LIUM_BASE_URL", "LIUM_SSH_KEY_PATH", "LIUM_WORKSPACE",
                "LIUM_SESSION_TOKEN", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with FakeLiumAPI(api_key=API_KEY) as api:
        world = Env(api, tmp_path)
        yield world
    for message in world.errors:
        assert API_KEY not in message
        assert API_KEY[:6] not in message and API_KEY[-4:] not in message
    assert not (home / ".lium" / "config.ini").exists()  # the SDK never wrote a config
    for path in tmp_path.rglob("*"):  # nor did anyone store the key in a file (cache, pins, SDK caches)
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


def huid_of(uuid: str) -> str:
    from lium.sdk.utils import generate_huid

    return str(generate_huid(uuid))


def confirm_yes(questions: list[str]):  # noqa: ANN201 - a tiny test double
    def confirm(text: str) -> bool:
        questions.append(text)
        return True

    return confirm


# ------------------------------------------------------------------------------------ resolution
def test_resolve_by_name_then_from_cache(env: Env) -> None:
    pod = env.api.add_pod("gpu-a", host="203.0.113.7", port=40022)
    env.api.add_pod("gpu-b")
    settings = env.settings(target="gpu-a")

    endpoint = resolve_target(settings, env.cache, env.known_hosts)
    assert (endpoint.host, endpoint.port, endpoint.user) == ("203.0.113.7", 40022, "root")
    assert endpoint.key_filename == str(env.key)
    assert endpoint.known_hosts == str(env.known_hosts / pod["id"])
    assert env.known_hosts.is_dir()
    assert endpoint.label == f"lium pod gpu-a ({pod['id']})"
    assert len(env.api.calls("GET", "/pods")) == 1
    entry = json.loads(env.cache.read_text())["entries"]["gpu-a"]
    assert entry["uuid"] == pod["id"] and entry["port"] == 40022 and entry["resolved_utc"].endswith("Z")

    before = len(env.api.requests)
    assert resolve_target(settings, env.cache, env.known_hosts) == endpoint
    assert len(env.api.requests) == before  # served from the cache, no API call

    pod["ssh_connect_cmd"] = "ssh root@203.0.113.99 -p 41000"  # the pod moved (e.g. after a reboot)
    moved = resolve_target(settings, env.cache, env.known_hosts, refresh=True)
    assert (moved.host, moved.port) == ("203.0.113.99", 41000)
    assert len(env.api.calls("GET", "/pods")) == 2
    assert resolve_target(settings, env.cache, env.known_hosts).port == 41000  # cache updated


def test_resolve_by_huid_and_by_uuid(env: Env) -> None:
    env.api.add_pod("other")
    pod = env.api.add_pod("gpu-a", host="203.0.113.8", port=40100)
    for target in (huid_of(pod["id"]), pod["id"], pod["id"].upper()):
        endpoint = resolve_target(env.settings(target=target), env.cache, env.known_hosts)
        assert (endpoint.host, endpoint.port) == ("203.0.113.8", 40100)
        assert endpoint.known_hosts == str(env.known_hosts / pod["id"])


def test_uuid_beats_a_pod_named_like_it(env: Env) -> None:
    real = env.api.add_pod("gpu-a", host="203.0.113.9")
    env.api.add_pod(real["id"], host="203.0.113.10")  # a pod whose *name* is the other pod's UUID
    endpoint = resolve_target(env.settings(target=real["id"]), env.cache, env.known_hosts)
    assert endpoint.host == "203.0.113.9"


def test_ambiguous_name_is_an_error_listing_uuids(env: Env) -> None:
    one, two = env.api.add_pod("twin"), env.api.add_pod("twin")
    message = env.resolve_fails(ExitCode.USAGE, "twin")
    assert one["id"] in message and two["id"] in message and "LIUM_TARGET" in message
    assert not env.cache.exists()


def test_not_found_lists_existing_pods(env: Env) -> None:
    for i in range(7):
        env.api.add_pod(f"pod-{i}")
    message = env.resolve_fails(ExitCode.NOT_FOUND, "nope")
    assert "pod-0" in message and "pod-4" in message and "pod-5" not in message and "2 more" in message


def test_pending_pod_says_wait_and_retry(env: Env) -> None:
    env.api.add_pod("slow", status="PENDING", pending_polls=None)
    message = env.resolve_fails(ExitCode.FAILED, "slow")
    assert "PENDING" in message and "wait and retry" in message
    assert not env.cache.exists()


def test_failed_pod_says_delete_it(env: Env) -> None:
    pod = env.api.add_pod("dead", status="CREATION_FAILED")
    message = env.resolve_fails(ExitCode.FAILED, "dead")
    assert "CREATION_FAILED" in message and f"--set LIUM_TARGET={pod['id']} pod-delete" in message


def test_unset_target_is_a_usage_error(env: Env) -> None:
    message = env.fails(ExitCode.USAGE, resolve_target, env.settings(), env.cache, env.known_hosts)
    assert "LIUM_TARGET" in message
    assert env.api.requests == []


# ---------------------------------------------------------------------------------------- errors
def test_no_api_key_is_a_usage_error_naming_lium_api_key(env: Env) -> None:
    settings = env.settings(target="x", api_key=None)
    message = env.fails(ExitCode.USAGE, resolve_target, settings, env.cache, env.known_hosts)
    assert "LIUM_API_KEY" in message and "config" in message
    assert env.api.requests == []


def test_api_key_from_the_environment_is_used(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.api.add_pod("gpu-a")
    monkeypatch.setenv("LIUM_API_KEY", API_KEY)
    resolve_target(env.settings(target="gpu-a", api_key=None), env.cache, env.known_hosts)
    assert [r.api_key for r in env.api.requests] == [API_KEY]


def test_wrong_api_key(env: Env) -> None:
    env.api.add_pod("gpu-a")
    settings = env.settings(target="gpu-a", api_key=API_KEY + "-wrong")
    message = env.fails(ExitCode.USAGE, resolve_target, settings, env.cache, env.known_hosts)
    assert "refused the API key" in message and "LIUM_API_KEY" in message
    assert "-wrong" not in message
    env.fails(ExitCode.USAGE, plan_pod_delete, replace(settings, target="gpu-a"))
    assert env.api.calls("DELETE") == []


def test_server_error_is_a_transport_error(env: Env) -> None:
    env.api.add_pod("gpu-a")
    env.api.fail(500, method="GET", path="/pods")
    message = env.resolve_fails(ExitCode.TRANSPORT, "gpu-a")
    assert "retry" in message
    assert len(env.api.calls("GET", "/pods")) == 3  # the SDK's own retries of an idempotent GET


def test_rate_limit_is_a_transport_error(env: Env) -> None:
    env.api.fail(429, method="GET", path="/pods")
    message = env.fails(ExitCode.TRANSPORT, plan_pod_delete, env.settings(target="gpu-a"))
    assert "rate-limited" in message


def test_unreachable_api_is_a_transport_error(env: Env) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = env.settings(target="gpu-a", base_url=f"http://127.0.0.1:{port}/api")
    message = env.fails(ExitCode.TRANSPORT, resolve_target, settings, env.cache, env.known_hosts)
    assert f"127.0.0.1:{port}" in message and "cannot reach" in message


def test_api_key_is_not_in_repr_or_str_of_settings(env: Env) -> None:
    settings = env.settings(target="gpu-a")
    assert API_KEY not in repr(settings) and API_KEY not in str(settings)


def test_base_url_comes_from_config_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIUM_BASE_URL", raising=False)
    assert base_url_of(None) == "https://lium.io/api"
    monkeypatch.setenv("LIUM_BASE_URL", "http://127.0.0.1:9/api/")
    assert base_url_of(None) == "http://127.0.0.1:9/api"
    assert base_url_of("http://x/api") == "http://x/api"


# ---------------------------------------------------------------------------------------- pod-up
def test_plan_pod_up_validates_without_network() -> None:
    plan = plan_pod_up(LiumSettings(gpu_type="H100", gpu_count=2, country="us", ttl_hours=1.5,
                                    volume="new:name=data,desc=training set", pod_name="trainer"))
    assert (plan.gpu_type, plan.gpu_count, plan.country, plan.name) == ("H100", 2, "US", "trainer")
    assert (plan.ttl_hours, plan.termination_hours) == (1.5, 2)
    assert plan.volume is not None and plan.volume.new_name == "data"
    assert plan.volume.new_description == "training set"
    text = plan.describe()
    assert "cheapest" in text and "H100" in text and "trainer" in text and "1.5 h" in text
    assert plan_pod_up(LiumSettings(executor_id="node-1")).name.startswith("wf-")

    bad = [
        LiumSettings(),  # neither node nor GPU type
        LiumSettings(executor_id="node-1", gpu_type="H100"),
        LiumSettings(gpu_type="H100", gpu_count=0),
        LiumSettings(gpu_type="H100", country="USA"),
        LiumSettings(gpu_type="H100", ttl_hours=0),
        LiumSettings(gpu_type="H100", ttl_hours=721),
        LiumSettings(gpu_type="H100", pod_name="has space"),
        LiumSettings(gpu_type="H100", ready_timeout_secs=0),
        LiumSettings(gpu_type="H100", volume="data"),
    ]
    for settings in bad:
        with pytest.raises(WorkflowError) as info:
            plan_pod_up(settings)
        assert info.value.code == ExitCode.USAGE


def test_volume_grammar() -> None:
    assert parse_volume("id:brave-fox-3a").existing == "brave-fox-3a"
    assert parse_volume("new:name=ds").new_name == "ds"
    bad = ("id:", "new:", "new:name=", "new:name=a,size=10", "new:name=a,name=b", "new:desc=x", "vol:1")
    for spec in bad:
        with pytest.raises(WorkflowError) as info:
            parse_volume(spec)
        assert info.value.code == ExitCode.USAGE and "LIUM_VOLUME" in str(info.value)
    with pytest.raises(WorkflowError, match="no size"):
        parse_volume("new:name=a,size=10")


def test_pod_up_with_executor_id(env: Env) -> None:
    node = env.api.add_executor(gpu_count=8, price_per_gpu=2.5)
    settings = env.settings(executor_id=huid_of(node["id"]), pod_name="trainer", ttl_hours=3, gpu_count=4)
    questions: list[str] = []
    pod, endpoint = execute_pod_up(plan_pod_up(settings), settings, env.known_hosts, confirm_yes(questions),
                                   cache_file=env.cache, poll_interval_secs=0.01)

    rents = env.api.calls("POST", r"/executors/.*/rent")
    assert [r.path for r in rents] == [f"/executors/{node['id']}/rent"]
    body = rents[0].body
    assert body["pod_name"] == "trainer"
    assert body["user_public_key"] == [PUBLIC_KEY]
    assert body["termination_hours"] == 3
    assert body["gpu_count"] == 4
    assert body["volume_id"] is None
    assert body["template_id"] == env.api.templates[0]["id"]  # the node's default template
    assert env.api.calls("POST", r"/pods/.*/schedule-removal") == []  # whole hours: the rent carries it

    assert len(questions) == 1 and node["id"] in questions[0] and "$10.00/h" in questions[0]
    assert pod.status == "RUNNING" and pod.name == "trainer" and pod.uuid in env.api.pod_ids()
    assert endpoint.known_hosts == str(env.known_hosts / pod.uuid)
    assert endpoint.key_filename == str(env.key)
    assert endpoint.label == f"lium pod trainer ({pod.uuid})"
    # the new pod is cached under its UUID: resolving it needs no API call
    before = len(env.api.requests)
    assert resolve_target(env.settings(target=pod.uuid), env.cache, env.known_hosts) == endpoint
    assert len(env.api.requests) == before


def test_pod_up_with_filters_picks_the_cheapest_match(env: Env) -> None:
    env.api.add_executor(machine_name=A100, gpu_count=1, price_per_gpu=0.5, country="US")
    env.api.add_executor(machine_name=H100, gpu_count=2, price_per_gpu=1.5, country="FR")
    us = env.api.add_executor(machine_name=H100, gpu_count=1, price_per_gpu=2.2, country="US")
    us_cheap = env.api.add_executor(machine_name=H100, gpu_count=1, price_per_gpu=2.0, country="US")
    env.api.add_executor(machine_name=H100, gpu_count=2, price_per_gpu=1.0, country="US")  # wrong count
    settings = env.settings(gpu_type="H100", gpu_count=1, country="US", pod_name="p1", yes=True,
                            template_id=env.api.templates[0]["id"])
    pod, _ = execute_pod_up(plan_pod_up(settings), settings, env.known_hosts, lambda _t: False,
                            poll_interval_secs=0.01)
    rents = env.api.calls("POST", r"/executors/.*/rent")
    assert [r.path for r in rents] == [f"/executors/{us_cheap['id']}/rent"]
    assert "gpu_count" not in rents[0].body  # the node's free GPUs, as matched
    assert "termination_hours" not in rents[0].body
    assert us["status"] == "available"
    assert pod.gpu_type == "H100"
    listing = env.api.calls("GET", "/executors")[0]
    assert listing.query["machine_names"] == [H100]


def test_pod_up_waits_through_pending(env: Env) -> None:
    env.api.add_executor()
    env.api.rent_pending_polls = 3
    progress: list[str] = []
    settings = env.settings(gpu_type="H100", pod_name="p2", yes=True)
    pod, endpoint = execute_pod_up(plan_pod_up(settings), settings, env.known_hosts, lambda _t: True,
                                   poll_interval_secs=0.01, on_progress=progress.append)
    assert pod.status == "RUNNING" and endpoint.port == pod.port
    assert len(env.api.calls("GET", "/pods")) >= 5  # before the rent, then 3 PENDING listings, then RUNNING
    assert any("PENDING" in line for line in progress) and "RUNNING" in progress[-1]


def test_pod_up_ready_timeout_says_still_billing(env: Env) -> None:
    env.api.add_executor()
    env.api.rent_pending_polls = None  # never becomes ready
    settings = env.settings(gpu_type="H100", pod_name="p3", yes=True, ready_timeout_secs=1)
    message = env.fails(ExitCode.FAILED, execute_pod_up, plan_pod_up(settings), settings, env.known_hosts,
                        lambda _t: True, cache_file=env.cache, poll_interval_secs=0.05)
    [uuid] = env.api.pod_ids()
    assert "STILL BILLING" in message and uuid in message and "PENDING" in message
    assert f"--set LIUM_TARGET={uuid} pod-delete --yes" in message
    assert env.api.calls("DELETE") == []  # never deleted behind the user's back
    assert not env.cache.exists()


def test_pod_up_declined_rents_nothing(env: Env) -> None:
    env.api.add_executor()
    settings = env.settings(gpu_type="H100", pod_name="p4", volume="new:name=ds")
    message = env.fails(ExitCode.REFUSED, execute_pod_up, plan_pod_up(settings), settings, env.known_hosts,
                        lambda _t: False)
    assert "nothing was rented" in message
    assert env.api.calls("POST") == [] and env.api.pod_ids() == []


def test_pod_up_refuses_a_name_already_in_use(env: Env) -> None:
    env.api.add_executor()
    existing = env.api.add_pod("taken")
    settings = env.settings(gpu_type="H100", pod_name="taken", yes=True)
    message = env.fails(ExitCode.USAGE, execute_pod_up, plan_pod_up(settings), settings, env.known_hosts,
                        lambda _t: True)
    assert existing["id"] in message and "LIUM_POD_NAME" in message
    assert env.api.calls("POST") == []


def test_pod_up_with_new_and_existing_volume_and_fractional_ttl(env: Env) -> None:
    env.api.add_executor()
    env.api.add_executor()
    settings = env.settings(gpu_type="H100", pod_name="v1", yes=True, volume="new:name=ds,desc=data",
                            ttl_hours=0.5)
    execute_pod_up(plan_pod_up(settings), settings, env.known_hosts, lambda _t: True, poll_interval_secs=0.01)
    [volume] = env.api.volumes
    assert (volume["name"], volume["description"]) == ("ds", "data")
    first_rent = env.api.calls("POST", r"/executors/.*/rent")[0].body
    assert first_rent["volume_id"] == volume["id"] and first_rent["termination_hours"] == 1
    [schedule] = env.api.calls("POST", r"/pods/.*/schedule-removal")
    assert schedule.body["removal_scheduled_at"].endswith("Z")

    again = env.settings(gpu_type="H100", pod_name="v2", yes=True, volume="new:name=ds")
    message = env.fails(ExitCode.USAGE, execute_pod_up, plan_pod_up(again), again, env.known_hosts,
                        lambda _t: True)
    assert f"id:{huid_of(volume['id'])}" in message

    attach = env.settings(gpu_type="H100", pod_name="v2", yes=True, volume=f"id:{huid_of(volume['id'])}")
    execute_pod_up(plan_pod_up(attach), attach, env.known_hosts, lambda _t: True, poll_interval_secs=0.01)
    assert env.api.calls("POST", r"/executors/.*/rent")[1].body["volume_id"] == volume["id"]
    assert len(env.api.calls("POST", "/volumes")) == 1


def test_pod_up_without_public_key_rents_nothing(env: Env) -> None:
    env.api.add_executor()
    env.key.with_name("id_ed25519.pub").unlink()
    settings = env.settings(gpu_type="H100", pod_name="p5", yes=True)
    message = env.fails(ExitCode.USAGE, execute_pod_up, plan_pod_up(settings), settings, env.known_hosts,
                        lambda _t: True)
    assert "LIUM_SSH_KEY_PATH" in message and env.api.requests == []


def test_pod_up_no_matching_node(env: Env) -> None:
    env.api.add_executor(machine_name=A100)
    settings = env.settings(gpu_type="H100", pod_name="p6", yes=True)
    message = env.fails(ExitCode.NOT_FOUND, execute_pod_up, plan_pod_up(settings), settings, env.known_hosts,
                        lambda _t: True)
    assert "H100" in message and env.api.calls("POST") == []


# ------------------------------------------------------------------------------------ pod-delete
def test_pod_delete_removes_exactly_the_configured_pod(env: Env) -> None:
    keep1 = env.api.add_pod("keep-1")
    victim = env.api.add_pod("victim")
    keep2 = env.api.add_pod("keep-2")
    settings = env.settings(target="victim")
    resolve_target(settings, env.cache, env.known_hosts)
    pin = env.known_hosts / victim["id"]
    pin.write_text("[198.51.100.1]:40000 ssh-ed25519 AAAA\n")

    plan = plan_pod_delete(settings)
    assert plan.pod.uuid == victim["id"] and victim["id"] in plan.describe()
    questions: list[str] = []
    deleted = execute_pod_delete(plan, settings, confirm_yes(questions), cache_file=env.cache,
                                 known_hosts_dir=env.known_hosts)

    assert deleted.uuid == victim["id"]
    assert [r.path for r in env.api.calls("DELETE")] == [f"/pods/{victim['id']}"]
    assert env.api.pod_ids() == [keep1["id"], keep2["id"]]
    [question] = questions
    assert "victim" in question and huid_of(victim["id"]) in question and victim["id"] in question
    assert "victim" not in json.loads(env.cache.read_text())["entries"]
    assert not pin.exists()


def test_pod_delete_uses_a_fresh_lookup_not_the_cache(env: Env) -> None:
    old = env.api.add_pod("trainer")
    settings = env.settings(target="trainer", yes=True)
    resolve_target(settings, env.cache, env.known_hosts)
    env.api.pods.remove(old)  # replaced behind our back by a new pod with the same name
    new = env.api.add_pod("trainer")
    execute_pod_delete(plan_pod_delete(settings), settings, lambda _t: False, cache_file=env.cache)
    assert [r.path for r in env.api.calls("DELETE")] == [f"/pods/{new['id']}"]


def test_pod_delete_refused_without_confirmation(env: Env) -> None:
    pod = env.api.add_pod("victim")
    settings = env.settings(target="victim")
    message = env.fails(ExitCode.REFUSED, execute_pod_delete, plan_pod_delete(settings), settings,
                        lambda _t: False)
    assert "not deleted" in message
    assert env.api.calls("DELETE") == [] and env.api.pod_ids() == [pod["id"]]


def test_pod_delete_without_a_single_match_deletes_nothing(env: Env) -> None:
    env.api.add_pod("twin")
    env.api.add_pod("twin")
    env.fails(ExitCode.USAGE, plan_pod_delete, env.settings(yes=True))
    env.fails(ExitCode.NOT_FOUND, plan_pod_delete, env.settings(target="ghost", yes=True))
    env.fails(ExitCode.USAGE, plan_pod_delete, env.settings(target="twin", yes=True))
    assert env.api.calls("DELETE") == [] and len(env.api.pod_ids()) == 2


def test_pod_delete_of_a_pod_gone_since_the_plan(env: Env) -> None:
    pod = env.api.add_pod("victim")
    settings = env.settings(target="victim", yes=True)
    plan = plan_pod_delete(settings)
    env.api.pods.remove(pod)
    env.fails(ExitCode.NOT_FOUND, execute_pod_delete, plan, settings, lambda _t: True)
    assert env.api.calls("DELETE") == []


def test_pod_delete_server_error_is_reported_once(env: Env) -> None:
    pod = env.api.add_pod("victim")
    env.api.fail(500, method="DELETE")
    settings = env.settings(target="victim", yes=True)
    env.fails(ExitCode.TRANSPORT, execute_pod_delete, plan_pod_delete(settings), settings, lambda _t: True)
    assert len(env.api.calls("DELETE")) == 1  # a DELETE is never blindly repeated
    assert env.api.pod_ids() == [pod["id"]]

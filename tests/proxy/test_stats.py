"""Parsers of haproxy 2.6's replies, on text it produced."""

from __future__ import annotations

import pytest

from treeherd.proxy.runtime import reply_is_success
from treeherd.proxy.stats import parse_info, parse_proc, parse_servers_state, parse_stat

SERVERS_STATE = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight"
    " srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state"
    " srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port"
    " srv_check_addr srv_agent_addr srv_agent_port\n"
    "3 be_b 1 s2 127.0.0.1 0 1 5 5 0 1 0 0 6 0 0 0 - 8082 - 0 0 - - 0\n"
    "5 be_c 1 127.0.0.1:9 127.0.0.1 2 0 10 10 0 8 2 0 6 0 0 0 - 9 - 0 0 - - 0\n\n"
)

PROC_AFTER_RELOAD = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "6480            master          1 [failed: 0]   0d00h00m29s     2.6.12-1+deb12u4\n"
    "# workers\n16667           worker          0               0d00h00m00s     2.6.12-1+deb12u4\n"
    "6483            worker          1               0d00h00m29s     2.6.12-1+deb12u4\n# programs\n\n"
)
PROC_AFTER_A_FAILED_RELOAD = (
    "#<PID>          <type>          <reloads>       <uptime>        <version>      \n"
    "6480            master          2 [failed: 1]   0d00h00m42s     2.6.12-1+deb12u4\n"
    "# workers\n16667           worker          1               0d00h00m13s     2.6.12-1+deb12u4\n# programs\n\n"
)


def test_servers_state() -> None:
    maint, running = parse_servers_state(SERVERS_STATE)
    assert (maint.backend, maint.name, maint.port, maint.weight) == ("be_b", "s2", 8082, 5)
    assert maint.in_maintenance and not maint.up
    assert running.name == "127.0.0.1:9" and running.up


def test_stat_rows() -> None:
    text = (
        "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,"
        "weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,lbtot,tracked,type,rate,"
        "rate_lim,rate_max,check_status,addr\n"
        "dep,FRONTEND,,,0,1,4096,12,0,0,0,0,0,,,,,OPEN,,,,,,,,,1,2,0,,,,0,0,0,1,,\n"
        "dep,s1,0,0,0,1,,7,0,0,,0,,2,0,1,1,DOWN,3,1,0,1,1,0,0,,1,3,1,,7,,2,0,,1,L4CON,127.0.0.1:9\n\n"
    )
    front, server = parse_stat(text)
    assert not front.is_server and front.total_sessions == 12
    assert server.is_server and server.status == "DOWN" and server.weight == 3
    assert (server.connection_errors, server.retries, server.redispatches) == (2, 1, 1)
    assert server.check_status == "L4CON" and server.address == "127.0.0.1:9"


def test_proc_after_a_reload_and_after_a_failed_one() -> None:
    table = parse_proc(PROC_AFTER_RELOAD)
    assert (table.master_pid, table.reloads, table.failed_reloads) == (6480, 1, 0)
    assert (table.current, table.old) == ([16667], [6483])
    failed = parse_proc(PROC_AFTER_A_FAILED_RELOAD)
    assert (failed.reloads, failed.failed_reloads, failed.current, failed.old) == (2, 1, [16667], [])


def test_info() -> None:
    assert parse_info("Name: HAProxy\nVersion: 2.6.12\nPid: 16667\n")["Pid"] == "16667"


@pytest.mark.parametrize(
    ("command", "reply", "success"),
    [
        ("add server be/s 1.2.3.4:5", "New server registered.\n\n", True),
        ("add server be/s 1.2.3.4:5", "Already exists a server with the same name in backend.\n", False),
        ("del server be/s", "Server deleted.\n", True),
        ("del server be/s", "Only servers in maintenance mode can be deleted.\n", False),
        (
            "set server be/s addr 10.0.0.2 port 81",
            "IP changed from '10.0.0.1' to '10.0.0.2', port ...\n",
            True,
        ),
        ("set server be/s addr 10.0.0.2 port 81", "No such server.\n", False),
        ("set weight be/s 300", "Absolute weight can only be between 0 and 256 inclusive.\n", False),
        ("set weight be/s 3", "\n", True),
        ("enable health be/s", "Health check was not configured on this server, cannot enable.\n", False),
        ("enable server be/s", "\n", True),
    ],
)
def test_every_reply_is_checked(command: str, reply: str, success: bool) -> None:
    assert reply_is_success(command, reply) is success

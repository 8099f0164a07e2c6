"""The pod environment the operator sets becomes the right `accelerate launch` command."""

import pytest

from kubetune_trainer.launch import TopologyError, launch_command

pytestmark = pytest.mark.unit


def test_single_process_trains_in_place():
    assert launch_command({}) is None
    assert launch_command({"NUM_MACHINES": "1", "NUM_PROCESSES": "1"}) is None


def test_worker_started_by_accelerate_never_relaunches():
    assert launch_command({"NUM_MACHINES": "2", "NUM_PROCESSES": "16", "RANK": "3"}) is None


def test_several_gpus_on_one_node():
    cmd = launch_command({"NUM_MACHINES": "1", "NUM_PROCESSES": "4", "MACHINE_RANK": "0"}, python="py")
    assert cmd[:3] == ["py", "-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert "--main_process_ip" not in cmd
    assert cmd[-3:] == ["--module", "kubetune_trainer", "trainer-run"]


def test_several_nodes_use_rank_and_rank0_address():
    env = {"NUM_MACHINES": "2", "NUM_PROCESSES": "16", "MACHINE_RANK": "1",
           "MASTER_ADDR": "ftj-0.ftj-workers.ns.svc", "MASTER_PORT": "29500"}
    cmd = launch_command(env, python="py")
    assert cmd[cmd.index("--num_machines") + 1] == "2"
    assert cmd[cmd.index("--machine_rank") + 1] == "1"
    assert cmd[cmd.index("--main_process_ip") + 1] == "ftj-0.ftj-workers.ns.svc"
    assert cmd[cmd.index("--main_process_port") + 1] == "29500"


@pytest.mark.parametrize("env, message", [
    ({"NUM_MACHINES": "2", "NUM_PROCESSES": "1"}, "must be >= NUM_MACHINES"),
    ({"NUM_MACHINES": "2", "NUM_PROCESSES": "3", "MASTER_ADDR": "x"}, "not a multiple"),
    ({"NUM_MACHINES": "2", "NUM_PROCESSES": "4", "MACHINE_RANK": "2", "MASTER_ADDR": "x"}, "MACHINE_RANK=2"),
    ({"NUM_MACHINES": "2", "NUM_PROCESSES": "4", "MACHINE_RANK": "0"}, "MASTER_ADDR is required"),
    ({"NUM_PROCESSES": "two"}, "not an integer"),
])
def test_impossible_topologies_are_named(env, message):
    with pytest.raises(TopologyError, match=message):
        launch_command(env)

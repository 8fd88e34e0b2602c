"""docs/distributed.md's recipes: every accelerate config in examples/distributed is read by accelerate's own
launcher, and the SLURM script starts a real two-node job (two "nodes" on 127.0.0.1, no SLURM here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port

RECIPES = Path(__file__).resolve().parent.parent / "examples" / "distributed"
# config file -> what accelerate must read from it: (launcher, processes, machines)
CONFIGS = {
    "one-node.yaml": ("multi_gpu", 8, 1),
    "multi-node.yaml": ("multi_gpu", 16, 2),
    "fsdp2.yaml": ("use_fsdp", 8, 1),
    "zero3.yaml": ("use_deepspeed", 8, 1),
}


def launch_args(config: Path):
    """The arguments `accelerate launch --config_file CONFIG` would run with, validated by accelerate."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(config), "train.py"])
    _validate_launch_command(args)
    return args


def test_every_recipe_file_is_here_and_tested():
    assert sorted(p.name for p in RECIPES.glob("*.yaml")) == sorted(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_accelerate_reads_each_config_as_documented(name, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(RECIPES / name))  # refuses a key accelerate does not know
    launcher, processes, machines = CONFIGS[name]
    args = launch_args(RECIPES / name)
    assert [flag for flag in ("multi_gpu", "use_fsdp", "use_deepspeed") if getattr(args, flag)] == [launcher]
    assert (args.num_processes, args.num_machines, args.mixed_precision) == (processes, machines, "bf16")
    assert (config.num_processes, config.num_machines) == (processes, machines)
    if name == "fsdp2.yaml":
        # What the launched processes see: accelerate's environment for them, read by the plugin they build.
        from accelerate.utils import FullyShardedDataParallelPlugin
        from accelerate.utils.launch import prepare_multi_gpu_env

        for key, value in prepare_multi_gpu_env(args).items():
            monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and "FULL_STATE_DICT" in str(plugin.state_dict_type)
        assert plugin.reshard_after_forward is True and plugin.cpu_ram_efficient_loading is True
    if name == "zero3.yaml":
        from accelerate.utils import DeepSpeedPlugin

        plugin = DeepSpeedPlugin(**config.deepspeed_config)
        assert plugin.zero_stage == 3 and plugin.zero3_save_16bit_model

@pytest.mark.slow
def test_the_slurm_script_launches_a_two_node_job_on_localhost(tmp_path, tiny_model_dir):
    """Each node's copy of slurm.sbatch (what `srun` starts) run here with the variables SLURM gives it.

    The batch step itself (`srun` starting those copies) needs a SLURM cluster and is not run here.
    """
    from test_train import conversational_rows

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in conversational_rows()[:4]))
    port = free_port()
    nodes = []
    for node in (0, 1):
        nodes.append({**os.environ, "DPO_NODE_TASK": "1", "SLURM_NNODES": "2", "SLURM_NODEID": str(node),
                      "SLURM_JOB_NODELIST": "localhost", "MAIN_PROCESS_IP": "127.0.0.1",
                      "MAIN_PROCESS_PORT": str(port), "GPUS_PER_NODE": "1", "MIXED_PRECISION": "no",
                      "OMP_NUM_THREADS": "1",
                      "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    command = [str(RECIPES / "slurm.sbatch"), "--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "1",
               "--logging-steps", "1", "--per-device-train-batch-size", "2", "--save-strategy", "no", "--disable-tqdm", "true",
               "--output-dir", str(tmp_path / "out")]
    started = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for env in nodes]
    results = [process.communicate(timeout=600) for process in started]
    for process, (_, err) in zip(started, results):
        assert process.returncode == 0, err[-3000:]
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # Both nodes trained: the step saw the 4 pairs, 2 on each node.
    [step] = [entry for entry in state["log_history"] if "loss" in entry]
    assert step["epoch"] == 1.0

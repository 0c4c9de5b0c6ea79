"""The reward_model asset survives its trainer being killed: materialising again resumes."""

import signal
import threading
import time

import dagster as dg
import psutil
import pytest

from rm_pipeline.definitions import build_defs, reward_pipeline_job

pytestmark = pytest.mark.trains

CHECKPOINTING = {
    "ops": {
        "reward_model": {
            "config": {"eval_steps": 2, "logging_steps": 1, "batch_size": 8, "early_stopping_patience": None}
        }
    }
}


def _kill_trainer_after_first_checkpoint(storage_root, stop: threading.Event, killed: list):
    while not stop.is_set():
        if list((storage_root / "models" / ".checkpoints").glob("*/checkpoint-*/trainer_state.json")):
            for child in psutil.Process().children(recursive=True):
                if "rm_pipeline.training_worker" in " ".join(child.cmdline()):
                    child.send_signal(signal.SIGKILL)
                    killed.append(child.pid)
            return
        time.sleep(0.05)


def test_killed_trainer_resumes_from_its_last_checkpoint(annotations_slice, storage_root, tiny_encoder):
    job = build_defs(str(storage_root), str(annotations_slice), tiny_encoder).resolve_job_def(reward_pipeline_job.name)
    with dg.instance_for_test() as instance:
        stop, killed = threading.Event(), []
        watcher = threading.Thread(target=_kill_trainer_after_first_checkpoint, args=(storage_root, stop, killed))
        watcher.start()
        first = job.execute_in_process(instance=instance, raise_on_error=False, run_config=CHECKPOINTING)
        stop.set()
        watcher.join()
        assert killed, "the trainer finished before it could be killed"
        assert not first.success
        assert not (storage_root / "models" / "current").exists()  # nothing half-written became current
        assert not [p for p in (storage_root / "models").iterdir() if p.name.startswith("rm-")]

        second = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=CHECKPOINTING,
            asset_selection=[dg.AssetKey("reward_model")],
        )
        assert second.success
        logs = [e.message for e in instance.all_logs(second.run_id) if e.step_key == "reward_model"]
    assert any("resuming from" in message and "checkpoint-" in message for message in logs)
    [model] = [p for p in (storage_root / "models").iterdir() if p.name.startswith("rm-")]
    assert (model / "model.safetensors").exists()
    assert not (storage_root / "models" / "current").exists()  # a candidate until evaluation promotes it
    assert not list((storage_root / "models" / ".checkpoints").glob("*/checkpoint-*"))

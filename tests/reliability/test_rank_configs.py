"""Ranks of one multi-process job started with different (valid) configs do not train together:
both processes stop at start with an error naming the keys that differ and each rank's value,
before anything is written into OUTPUT_DIR.

The two ranks are started the way torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the
environment; gloo on CPU), each with its own command line, as two machines with different
configs would.
"""
import socket
import subprocess

import pytest

from reliability.digits_runs import env_for, make_small_digits, md5s, train_command

pytestmark = pytest.mark.slow


def test_ranks_with_different_configs_fail_naming_the_differing_keys(tmp_path):
    env = env_for(make_small_digits(tmp_path / "datasets"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    before = md5s(out)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank, lr in enumerate(("0.01", "0.02")):
        rank_env = dict(env, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen(train_command(out, "SOLVER.BASE_LR", lr), env=rank_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=180) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode != 0
        assert "the 2 processes were started with different configs (1 key(s) differ): " \
               "SOLVER.BASE_LR: rank 0 0.01, rank 1 0.02" in err, err[-3000:]
    assert md5s(out) == before

"""Sharding over devices and hosts against single-device and numpy references.

The multi-device tests need 8 CPU devices, which must be requested before JAX
starts; the pytest process has one. ``test_multidevice_tests_in_subprocess``
therefore reruns this file in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, where they run; it
fails unless every one of them passed there. tests/conftest.py selects the
``multidevice`` tests only in a process with 8 devices and the
``host_process`` ones (which start processes of their own) only in the main
one, so nothing is reported as skipped. The two-process test starts two JAX
processes joined by ``jax.distributed``.
"""

import json
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from gru4rec_jax import checkpoint, data, evaluation, model, optimizer, sampling, sharding, synthetic, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_DEVICES = 8


def _mesh(spec: str, devices=None):
    parsed = sharding.parse_mesh(spec)
    return None if parsed is None else sharding.make_mesh(parsed, devices)


# -- mesh specs (any device count) ------------------------------------------------------------


def test_parse_mesh():
    assert sharding.parse_mesh("") is None
    assert sharding.parse_mesh("items:8") == sharding.MeshSpec(data=1, items=8)
    assert sharding.parse_mesh(" data:2, items:4 ") == sharding.MeshSpec(data=2, items=4)
    assert sharding.parse_mesh("data:4") == sharding.MeshSpec(data=4, items=1)


@pytest.mark.parametrize("spec, message", [
    ("model:2", "expected axis:size"),
    ("items", "expected axis:size"),
    ("items:0", "positive integer"),
    ("items:-2", "positive integer"),
    ("items:x", "positive integer"),
    ("items:2,items:2", "given twice"),
])
def test_parse_mesh_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        sharding.parse_mesh(spec)
    assert "\n" not in str(error.value)


def test_mesh_size_must_match_the_devices():
    with pytest.raises(ValueError, match=r"needs 2 devices, but 1 are available"):
        sharding.make_mesh(sharding.MeshSpec(items=2), jax.devices()[:1])
    mesh = sharding.make_mesh(sharding.MeshSpec(), jax.devices()[:1])
    assert dict(mesh.shape) == {"data": 1, "items": 1}
    assert sharding.padded_rows(37, None) == 37


# -- 8 devices ---------------------------------------------------------------------------------


@pytest.mark.multidevice
def test_gather_rows_matches_numpy():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(40, 3)).astype(np.float32)  # 37 items padded to 40
    indices = np.array([0, 36, 5, 5, 39, 12, 20, 0, 31], np.int32)
    for spec in ("items:8", "data:2,items:4"):
        mesh = _mesh(spec)
        sharded = sharding.put(table, sharding.table_sharding(mesh, 2))
        got = jax.jit(lambda t, i: sharding.gather_rows(t, i, mesh))(sharded, indices)
        np.testing.assert_array_equal(np.asarray(got), table[indices])
        bias = sharding.put(table[:, 0], sharding.table_sharding(mesh, 1))
        got = jax.jit(lambda t, i: sharding.gather_rows(t, i, mesh))(bias, indices)
        np.testing.assert_array_equal(np.asarray(got), table[indices, 0])


@pytest.mark.multidevice
@pytest.mark.parametrize("strategy", ["rows", "masked"])
def test_sharded_sparse_update_matches_single_device(strategy):
    rng = np.random.default_rng(1)
    n, rows, h = 37, 40, 4
    table, acc, vel = (rng.normal(size=(n, h)).astype(np.float32) for _ in range(3))
    acc = np.abs(acc)
    # Duplicates within and across the two index sets, and "no row" markers (>= the padded row count).
    index_sets = (np.array([3, 3, 36, 0, rows, 17], np.int32), np.array([17, 8, 3, rows + 5, 29, 36, 36], np.int32))
    grads = tuple(rng.normal(size=(len(i), h)).astype(np.float32) for i in index_sets)
    args = dict(learning_rate=0.1, momentum=0.3, strategy=strategy)
    expected = optimizer.sparse_adagrad_momentum_update(
        *map(jax.numpy.asarray, (table, acc, vel)), index_sets, grads, **args)
    padded = [np.pad(x, [(0, rows - n), (0, 0)]) for x in (table, acc, vel)]
    for spec in ("items:8", "data:2,items:4"):
        mesh = _mesh(spec)
        placed = [sharding.put(x, sharding.table_sharding(mesh, 2)) for x in padded]
        update = sharding.sharded_sparse_adagrad(mesh, **args)
        got = jax.jit(update)(*placed, index_sets, grads)
        for g, e, before in zip(got, expected, padded):
            assert g.sharding.spec[0] == "items"
            np.testing.assert_allclose(np.asarray(g)[:n], np.asarray(e), rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(np.asarray(g)[n:], before[n:])  # padding untouched


def _numpy_ranks(output, targets, wy, by, mode):
    scores = output.astype(np.float64) @ wy.T.astype(np.float64) + by
    target = scores[np.arange(len(targets)), targets][:, None]
    greater, equal = (scores > target).sum(1), (scores == target).sum(1)
    return {"standard": greater + 1.0, "conservative": greater + equal.astype(float),
            "median": greater + 0.5 * (equal - 1) + 1.0}[mode]


def _reference():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import test_evaluation

    return test_evaluation


def _assert_no_near_ties(params, sessions, cutoffs=()):
    """The precondition of comparing evaluations compiled for other meshes: no rank (nor top-K list)
    that float32 rounding could decide (tests/test_evaluation.py's numpy reference; ``params`` unpadded)."""
    reference = _reference()
    lists = [sessions.items[a:b] for a, b in zip(sessions.offsets[:-1], sessions.offsets[1:])]
    for scores, target in reference.reference_events(params, lists):
        reference.assert_no_near_ties(scores, target, cutoffs)


@pytest.mark.multidevice
@pytest.mark.parametrize("item_block", [65536, 3])
@pytest.mark.parametrize("perturbed", [False, True])
def test_sharded_rank_counts_match_numpy(item_block, perturbed, request):
    """Exact ranks with frequent exact ties, also where every product rounds another way
    (each comparison takes both of its scores from one product); the top-k lists of item coverage,
    equal scores in item order, padding rows (scoring 0, as real items may) never in them."""
    if perturbed:
        assert request.getfixturevalue("rounding_differs_per_product") == []
    rng = np.random.default_rng(2)
    n, h, lanes = 37, 4, 8
    # Small integers: every score is exact in float32 and float64, and ties are frequent.
    wy = rng.integers(-2, 3, size=(n, h)).astype(np.float32)
    by = rng.integers(-1, 2, size=n).astype(np.float32)
    output = rng.integers(-2, 3, size=(lanes, h)).astype(np.float32)
    targets = rng.integers(0, n, size=lanes).astype(np.int32)
    for spec in ("items:8", "data:2,items:4"):
        mesh = _mesh(spec)
        rows = sharding.padded_rows(n, mesh)
        tables = {"Wy": sharding.put(np.pad(wy, [(0, rows - n), (0, 0)]), sharding.table_sharding(mesh, 2)),
                  "By": sharding.put(np.pad(by, (0, rows - n)), sharding.table_sharding(mesh, 1))}
        for mode in evaluation.EVAL_MODES:
            counts = jax.jit(lambda o, t, tb: evaluation.target_counts_sharded(o, t, tb, n, item_block, mesh, mode))(
                output, targets, tables)
            ranks = evaluation._ranks_of_counts(tuple(np.asarray(c, np.float64) for c in counts), mode)
            np.testing.assert_array_equal(ranks, _numpy_ranks(output, targets, wy, by, mode))
        scores = output.astype(np.float64) @ wy.T.astype(np.float64) + by
        for k in (5, n):
            counts, top = jax.jit(lambda o, t, tb: evaluation.target_counts_sharded(
                o, t, tb, n, item_block, mesh, "median", top_k=k))(output, targets, tables)
            np.testing.assert_array_equal(np.asarray(top), [_reference().top_items(row, k) for row in scores])


def _tiny_run():
    train, test = synthetic.generate_train_test(160, 53, seed=5)
    item_map = data.ItemMap.from_training(train.item_ids)
    sessions, test_sessions = data.build_sessions(train, item_map), data.build_sessions(test, item_map)
    model_config = model.ModelConfig(n_items=len(item_map), layers=(8,))
    config = training.TrainConfig(batch_size=8, n_sample=7, n_epochs=1, momentum=0.3, dropout_p_hidden=0.2,
                                  chunk_steps=64, logq=1.0)
    return sessions, test_sessions, model_config, config, item_map


@pytest.mark.multidevice
def test_training_and_evaluation_match_single_device():
    sessions, test_sessions, model_config, config, _ = _tiny_run()
    n = model_config.n_items
    quiet = dict(log=lambda m: None)
    state, history = training.fit(sessions, model_config, config, **quiet)
    # The median rank reads both counts (the tie modes against numpy: test_sharded_rank_counts_match_numpy).
    reference = {mode: evaluation.evaluate(state.params, model_config, test_sessions, mode=mode, batch_size=16,
                                           item_coverage=True)
                 for mode in ("median",)}
    # So that the ranks and lists do not depend on the compiled program.
    _assert_no_near_ties(state.params, test_sessions, (1, 5, 10, 20))
    # items:8 trains in test_checkpoint_restores_onto_other_meshes.
    for spec in ("data:2,items:4",):
        mesh = _mesh(spec)
        sharded, sharded_history = training.fit(sessions, model_config, config, mesh=mesh, **quiet)
        assert sharded.params["tables"]["Wy"].shape[0] == sharding.padded_rows(n, mesh)
        assert sharded.table_acc["Wy"].sharding.spec[0] == "items"
        for a, b in zip(history, sharded_history):
            assert a.loss == pytest.approx(b.loss, rel=1e-5) and a.n_events == b.n_events
        unpadded = sharding.unpad_tables(sharded, n)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5),
                     unpadded, state)
        # The sharded evaluator on the single-device state: the same ranks and top-K lists.
        placed = sharding.pad_tables(state, n, mesh)
        for mode, expected in reference.items():
            got = evaluation.evaluate(placed.params, model_config, test_sessions, mode=mode, batch_size=16,
                                      mesh=mesh, item_block=4, item_coverage=True)
            for key, value in expected.items():
                assert got[key] == pytest.approx(value, abs=1e-6), (spec, mode, key)


@pytest.mark.multidevice
def test_hrnn_on_a_mesh_matches_single_device():
    from gru4rec_jax import experiment, hrnn, user_data

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from test_hrnn import _user_tables

    train, test = _user_tables()
    item_map = data.ItemMap.from_training(train.item_ids)
    config = hrnn.HRNNConfig(session=model.ModelConfig(n_items=len(item_map), layers=(8,)), user_layers=(6,))
    train_config = training.TrainConfig(batch_size=4, n_sample=5, n_epochs=1, dropout_p_init=0.1,
                                        dropout_p_hidden_usr=0.1)
    sessions = user_data.build_user_sessions(train, item_map)
    replay = experiment._replay_data(train, test, item_map, "test")
    mesh = _mesh("data:2,items:4")
    results = []
    for m in (None, mesh):
        state, history = training.fit(sessions, config, train_config, mesh=m, log=lambda msg: None)
        results.append((history[0].loss, evaluation.evaluate(state.params, config, replay, batch_size=8, mesh=m)))
    (loss, expected), (sharded_loss, got) = results
    assert sharded_loss == pytest.approx(loss, rel=1e-5)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.multidevice
def test_no_collective_moves_a_whole_table():
    n, h = 4000, 16
    model_config = model.ModelConfig(n_items=n, layers=(h,))
    config = training.TrainConfig(batch_size=8, n_sample=7, momentum=0.3, chunk_steps=2, table_update="rows")
    mesh = _mesh("data:2,items:4")
    state = sharding.place_state(lambda k: training.init_train_state(k, model_config), (jax.random.PRNGKey(0),),
                                 n, mesh)
    lanes, rep = sharding.lane_sharding(mesh, 2, 1), sharding.replicated(mesh)
    zeros = np.zeros((2, 8), np.int32)
    chunk = {name: sharding.put(zeros.astype(bool) if name in ("active", "reset") else zeros, lanes)
             for name in ("inputs", "targets", "active", "reset")}
    hidden = [sharding.put(np.zeros((8, h), np.float32), sharding.lane_sharding(mesh, 2, 0))]
    sampler = jax.tree.map(lambda x: sharding.put(x, rep), sampling.alias_table(np.ones(n), 0.5))
    key, log_support = sharding.put(np.asarray(jax.random.PRNGKey(1)), rep), sharding.put(np.zeros(n, np.float32), rep)
    hlo = training.make_train_chunk(model_config, config, mesh).lower(
        state, hidden, chunk, key, sampler, log_support).compile().as_text()
    collectives = [line for line in hlo.splitlines()
                   if re.search(r"= \S+ (all-gather|all-to-all|collective-permute|all-reduce)(-start)?\(", line)]
    assert collectives, "expected the row gathers' psums"
    local_rows = n // mesh.shape["items"]
    for line in collectives:
        result_shape = line.split("=", 1)[1]
        dims = [int(d) for d in re.findall(r"\d+", result_shape.split("(")[0].split("{")[0])]
        assert all(d < local_rows for d in dims), line


@pytest.mark.multidevice
def test_checkpoint_restores_onto_other_meshes(tmp_path):
    sessions, test_sessions, model_config, config, item_map = _tiny_run()
    mesh = _mesh("items:8")
    state, history = training.fit(sessions, model_config, config, mesh=mesh, log=lambda m: None)
    writer = checkpoint.CheckpointWriter(str(tmp_path / "ckpt"))
    writer.save(state, model_config=model_config, train_config=config, item_map=item_map, epoch=1,
                epoch_losses=[history[0].loss])
    writer.close()
    metrics = evaluation.evaluate(state.params, model_config, test_sessions, batch_size=16, mesh=mesh)
    n = model_config.n_items
    expected = sharding.unpad_tables(state, n)
    _assert_no_near_ties(expected.params, test_sessions)
    targets = {"one device": None, "data:2,items:4": _mesh("data:2,items:4"),
               "items:5 (does not)": _mesh("items:5", jax.devices()[:5])}
    for name, target in targets.items():
        restored = checkpoint.load(str(tmp_path / "ckpt"), mesh=target)
        rows = restored.state.params["tables"]["Wy"].shape[0]
        assert rows == sharding.padded_rows(n, target), name
        jax.tree.map(np.testing.assert_array_equal, sharding.unpad_tables(restored.state, n), expected)
        got = evaluation.evaluate(restored.state.params, model_config, test_sessions, batch_size=16, mesh=target)
        for key, value in metrics.items():
            assert got[key] == pytest.approx(value, abs=1e-6), (name, key)


@pytest.mark.multidevice
def test_batch_must_divide_by_the_data_axis():
    sessions, test_sessions, model_config, _, _ = _tiny_run()
    mesh = _mesh("data:8")
    with pytest.raises(ValueError, match=r"^--batch_size 12 is not divisible by the mesh's data axis \(8\)$"):
        training.fit(sessions, model_config, training.TrainConfig(batch_size=12), mesh=mesh, log=lambda m: None)
    with pytest.raises(ValueError, match=r"^--eval_batch_size 20 is not divisible"):
        evaluation.evaluate({}, model_config, test_sessions, batch_size=20, mesh=mesh)


# -- the wrapper that runs the 8-device tests ----------------------------------------------------


@pytest.mark.slow  # about 1.5 minutes on 2 cores
@pytest.mark.host_process
def test_multidevice_tests_in_subprocess():
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={N_DEVICES}",
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    # Everything ran there but the three tests that start their own processes (this one included).
    assert re.search(r"\d+ passed, 3 deselected", summary), summary


# -- two processes (jax.distributed) -------------------------------------------------------------

WORKER = """
import json, sys
import jax
jax.config.update("jax_default_matmul_precision", "highest")
from gru4rec_jax import data, evaluation, model, sharding, synthetic, training
sharding.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
train, test = synthetic.generate_train_test(300, 53, seed=5)
item_map = data.ItemMap.from_training(train.item_ids)
model_config = model.ModelConfig(n_items=len(item_map), layers=(8,))
config = training.TrainConfig(batch_size=8, n_sample=7, n_epochs=1, momentum=0.3, dropout_p_hidden=0.2,
                              chunk_steps=64)
mesh = sharding.make_mesh(sharding.parse_mesh("data:2,items:2"))
state, history = training.fit(data.build_sessions(train, item_map), model_config, config, mesh=mesh,
                              log=lambda m: None)
metrics = evaluation.evaluate(state.params, model_config, data.build_sessions(test, item_map),
                              batch_size=16, mesh=mesh)
shards = sorted(s.data.shape[0] for s in state.params["tables"]["Wy"].addressable_shards)
print("RESULT " + json.dumps({"loss": history[0].loss, "metrics": metrics, "processes": jax.process_count(),
                              "local_devices": jax.local_device_count(), "local_rows": shards}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # about 35 s on 2 cores
@pytest.mark.host_process
def test_two_processes_match_single_device():
    address = f"localhost:{_free_port()}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": ROOT}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(i)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for worker in workers:
        try:
            out, err = worker.communicate(timeout=300)
        finally:
            worker.kill()
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.split("RESULT ", 1)[1]))
    assert results[0] == results[1]  # one global computation, read by both processes
    assert results[0]["processes"] == 2 and results[0]["local_devices"] == 2
    # Each process holds its two shards of the 48 padded rows of 47 items over items:2 (24 each, x data:2).
    assert results[0]["local_rows"] == [24, 24]

    train, test = synthetic.generate_train_test(300, 53, seed=5)
    item_map = data.ItemMap.from_training(train.item_ids)
    model_config = model.ModelConfig(n_items=len(item_map), layers=(8,))
    config = training.TrainConfig(batch_size=8, n_sample=7, n_epochs=1, momentum=0.3, dropout_p_hidden=0.2,
                                  chunk_steps=64)
    state, history = training.fit(data.build_sessions(train, item_map), model_config, config, log=lambda m: None)
    test_sessions = data.build_sessions(test, item_map)
    metrics = evaluation.evaluate(state.params, model_config, test_sessions, batch_size=16)
    _assert_no_near_ties(state.params, test_sessions)
    assert results[0]["loss"] == pytest.approx(history[0].loss, rel=1e-5)
    for key, value in metrics.items():
        assert results[0]["metrics"][key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.multidevice
def test_sharded_init_matches_single_device():
    from gru4rec_jax import hrnn, networks

    configs = [model.ModelConfig(n_items=70001, layers=(2,), embedding="onehot"),  # block-drawn, padded
               model.ModelConfig(n_items=50, layers=(3,), embedding="separate", embedding_dim=2),
               hrnn.HRNNConfig(session=model.ModelConfig(n_items=50, layers=(2,)), user_layers=(2,))]
    mesh = _mesh("data:2,items:4")
    key = jax.random.PRNGKey(3)
    for config in configs:
        net = networks.network_for(config)
        n = net.items.n_items
        expected = training.init_train_state(key, config)
        state = sharding.init_state(lambda k: training.init_train_state(k, config), net.item_table_keys, key, n, mesh)
        assert state.params["tables"]["Wy"].sharding.spec[0] == "items"
        # Equal up to the last bit of a few values (XLA may fuse the sharded draw differently).
        jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9),
                     sharding.unpad_tables(state, n), expected)
        padding = np.asarray(state.params["tables"]["Wy"])[n:]
        assert padding.size and not padding.any()


@pytest.mark.host_process
def test_sharded_memory_benchmark_runs_and_refuses_a_state_that_fits(tmp_path):
    def bench(*args):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the script asks for its devices
        return subprocess.run([sys.executable, "-m", "experiments.benchmark_sharded", "--h=8", "--chunk_steps=4",
                               "--chunks=1", "--eval_events=32", "--eval_batch_size=32", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    refused = bench("--items=1000", "--device_memory_gib=1")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines()[-1].startswith("error: the state (0.00 GiB) fits one 1.0 GiB device")
    report_path = tmp_path / "report.json"
    # 70,001 items x (8 + 1) floats x 3 = 7.6 MB on one device; 1/8 of it plus the sampler per device.
    ran = bench("--items=70001", "--device_memory_gib=0.005", "--mesh=data:2,items:4", f"--json_out={report_path}")
    assert ran.returncode == 0, ran.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["fits"] and report["devices"] == 8 and report["eval_events"] > 0
    assert report["one_device_state_gib"] > 0.005 >= report["max_per_device_gib"]
    # Per device: a quarter of the 70,004 padded rows of Wy and By, times 3 (parameter, accumulator,
    # velocity); the GRU weights (Wx, Wrz, Wh, b) times 3; the step counter; the sampler and log-support.
    expected = (70004 // 4) * 9 * 4 * 3 + (8 * 24 + 8 * 16 + 8 * 8 + 24) * 4 * 3 + 4 + 70001 * 12
    assert report["max_per_device_gib"] * (1 << 30) == pytest.approx(expected, rel=1e-9)

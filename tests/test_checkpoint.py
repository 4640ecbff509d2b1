"""Save/restore round trips and the recommendation API."""

import gc
import os
import shutil
import time

import jax
import numpy as np
import pytest

from gru4rec_jax import checkpoint, data, model, recommend, synthetic, training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    train, _ = synthetic.generate_train_test(200, 30, seed=5)
    item_map = data.ItemMap.from_training(train.item_ids)
    sessions = data.build_sessions(train, item_map)
    model_config = model.ModelConfig(n_items=len(item_map), layers=(8, 6))
    config = training.TrainConfig(batch_size=4, n_sample=5, n_epochs=1, momentum=0.4)
    state, history = training.fit(sessions, model_config, config, log=lambda m: None)
    path = str(tmp_path_factory.mktemp("ckpt") / "run")
    writer = checkpoint.CheckpointWriter(path)
    writer.save(state, model_config=model_config, train_config=config, item_map=item_map,
                epoch=1, epoch_losses=[history[0].loss], extra={"note": "x"})
    writer.close()
    return path, state, model_config, config, item_map, history


def test_round_trip_restores_everything(trained):
    path, state, model_config, config, item_map, history = trained
    restored = checkpoint.load(path)
    jax.tree.map(np.testing.assert_array_equal, restored.state, state)
    assert restored.model_config == model_config
    assert restored.train_config == config
    np.testing.assert_array_equal(restored.item_map.ids, item_map.ids)
    assert restored.epoch == 1 and restored.epoch_losses == [history[0].loss]
    assert restored.extra == {"note": "x"}


def test_missing_or_empty_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint directory"):
        checkpoint.load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint found"):
        checkpoint.load(str(tmp_path / "empty"))
    assert checkpoint.saved_epochs(str(tmp_path / "empty")) == []


def _numpy_top_k(params, model_config, item_indices, k):
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    sig = lambda a: 1 / (1 + np.exp(-a))  # noqa: E731
    hidden = [np.zeros(h) for h in model_config.layers]
    for item in item_indices:
        x = params["tables"]["Wy"][item]
        for i, layer in enumerate(params["layers"]):
            h, size = hidden[i], hidden[i].shape[0]
            v = x @ layer["Wx"] + layer["b"]
            r = sig(v[size : 2 * size] + h @ layer["Wrz"][:, :size])
            z = sig(v[2 * size :] + h @ layer["Wrz"][:, size:])
            c = np.tanh((r * h) @ layer["Wh"] + v[:size])
            hidden[i] = x = (1 - z) * h + z * c
    scores = params["tables"]["Wy"] @ x + params["tables"]["By"]
    return np.argsort(-scores, kind="stable")[:k], scores


def test_recommender_ranks_like_a_numpy_forward_pass(trained):
    path, state, model_config, _, item_map, _ = trained
    rec = recommend.Recommender.load(path)
    prefix = [str(i) for i in item_map.ids[[3, 1, 4]]]
    got = rec.recommend(prefix + ["never-seen-item"], k=5)  # unknown items are skipped
    want, scores = _numpy_top_k(state.params, model_config, [3, 1, 4], 5)
    assert [item for item, _ in got] == [str(item_map.ids[i]) for i in want]
    np.testing.assert_allclose([s for _, s in got], scores[want], rtol=1e-4)


def test_recommender_rejects_sessions_without_known_items(trained):
    rec = recommend.Recommender.load(trained[0])
    with pytest.raises(data.DataError, match="none of the session's items"):
        rec.recommend(["unknown-1", "unknown-2"])


# Damaged checkpoints: each way a step's files can be broken, applied to the latest of two steps.
def _overwrite_with_garbage(path):
    with open(path, "wb") as f:  # random bytes, as many as there were
        f.write(np.random.default_rng(0).integers(0, 256, max(os.path.getsize(path), 16), dtype=np.uint8).tobytes())


def _garbage(step_dir):
    _overwrite_with_garbage(os.path.join(step_dir, "state", "manifest.ocdbt"))


def _truncated(step_dir):
    path = os.path.join(step_dir, "meta", "metadata")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _missing(step_dir):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _emptied(step_dir):
    shutil.rmtree(step_dir)
    os.mkdir(step_dir)


@pytest.fixture()
def two_epochs(trained, tmp_path):
    """A checkpoint directory with epochs 1 and 2 (epoch 2's state one step further)."""
    _, state, model_config, config, item_map, history = trained
    path = str(tmp_path / "two")
    writer = checkpoint.CheckpointWriter(path)
    for epoch in (1, 2):
        writer.save(state if epoch == 1 else state.replace(step=state.step + 1), model_config=model_config,
                    train_config=config, item_map=item_map, epoch=epoch, epoch_losses=[history[0].loss] * epoch)
    writer.close()
    return path, state


@pytest.fixture()
def abandoned_reads():
    """orbax leaves the reads it abandons after a failed one to finish in TensorStore's threads and be
    collected later, each with a complaint: let them finish here, so that no later test reports them."""
    yield
    time.sleep(0.5)
    gc.collect()


def _abandoned(test):
    """For tests whose loads fail: their abandoned reads are waited for, and their complaints ignored."""
    ignored = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
    return pytest.mark.usefixtures("abandoned_reads")(ignored(test))


@_abandoned
@pytest.mark.parametrize("damage", [_garbage, _truncated, _missing, _emptied])
def test_damaged_latest_checkpoint_is_a_one_line_error_naming_it(two_epochs, damage):
    path, state = two_epochs
    damage(os.path.join(path, "2"))
    for load in (checkpoint.load, recommend.Recommender.load):
        with pytest.raises(checkpoint.CheckpointError) as caught:
            load(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: the checkpoint of epoch 2 is damaged or unreadable (")
        assert message.endswith("; epoch 1 is also there: --load_epoch=1 loads it") and "\n" not in message
    # The older epoch is intact and still loads, by its number.
    older = checkpoint.load(path, epoch=1)
    assert older.epoch == 1
    jax.tree.map(np.testing.assert_array_equal, older.state, state)
    assert recommend.Recommender.load(path, epoch=1).item_map.ids.tolist() == older.item_map.ids.tolist()


def test_missing_epoch_names_the_epochs_there(two_epochs):
    path, _ = two_epochs
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint of epoch 5 \(it holds epochs 1, 2\)$"):
        checkpoint.load(path, epoch=5)


def test_one_epochs_step_directory_points_to_its_parent(two_epochs):
    path, _ = two_epochs
    step_dir = os.path.join(path, "2")
    with pytest.raises(checkpoint.CheckpointError, match=f"load {path} with --load_epoch=2$"):
        checkpoint.load(step_dir)


def test_an_unfinished_save_is_never_taken_for_a_checkpoint(two_epochs):
    """orbax writes a step into '<step>.orbax-checkpoint-tmp' and renames it when complete: a save cut
    short (here: a damaged copy of step 2) stays invisible."""
    path, state = two_epochs
    tmp = os.path.join(path, "3.orbax-checkpoint-tmp")
    shutil.copytree(os.path.join(path, "2"), tmp)
    _truncated(tmp)
    _garbage(tmp)
    restored = checkpoint.load(path)
    assert restored.epoch == 2 and int(restored.state.step) == int(state.step) + 1
    assert checkpoint.saved_epochs(path) == [1, 2]


@_abandoned
def test_any_damaged_file_fails_loudly_or_changes_nothing(two_epochs, tmp_path):
    """Every file of a step, overwritten, truncated or deleted: the load either raises CheckpointError
    or restores exactly what was saved (some files are not read, e.g. commit markers)."""
    path, state = two_epochs
    step_dir = os.path.join(path, "2")
    files = sorted(os.path.relpath(os.path.join(d, f), step_dir) for d, _, names in os.walk(step_dir) for f in names)
    failed = []
    for name in files:
        for damage in (_overwrite_with_garbage, lambda p: os.truncate(p, os.path.getsize(p) // 2), os.remove):
            copy = str(tmp_path / "copy")
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(path, copy)
            damage(os.path.join(copy, "2", name))
            try:
                restored = checkpoint.load(copy, epoch=2)
            except checkpoint.CheckpointError as error:
                assert str(error).startswith(f"{copy}: the checkpoint of epoch 2 is damaged"), str(error)
                failed.append(name)
                continue
            assert int(restored.state.step) == int(state.step) + 1
            jax.tree.map(np.testing.assert_array_equal, restored.state.params, state.params)
    # The files that hold the arrays and the JSON are among those that fail.
    assert {"meta/metadata", "state/_METADATA", "state/manifest.ocdbt"} <= set(failed)

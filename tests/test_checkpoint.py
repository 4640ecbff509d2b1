"""Save/restore round trips and the recommendation API."""

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
    assert not checkpoint.save_dir_has_checkpoints(str(tmp_path / "empty"))


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

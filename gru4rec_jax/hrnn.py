"""HRNN: personalised session-based recommendation (Quadrana et al., RecSys 2017).

A session GRU (the GRU4Rec network) predicts the next item inside a session;
a user GRU, updated once at the end of each session with that session's last
session state, carries the user across sessions: ``c_m = GRU_usr(s_m, c_{m-1})``
with ``c_0 = 0``. Each later session of the user starts from
``s = tanh(W_init c_m + b_init)``; a user's first session starts from zero
(EXTENSIONS.md section 3).

Modes: ``init`` (the user state only initialises the session GRU) and ``all``
(it is also an input of the first session layer at every step, through a
matrix ``Wc``). Where ``all`` feeds it, ``user_input`` says:

- ``gates`` (default, the authors' code): into the reset and update gates
  only; ``Wc`` is (u, 2h), added to their pre-activations. The reference
  allocates a third block for the candidate but never uses it.
- ``all_blocks`` (the paper's "input" read literally): into all three gate
  blocks, candidate included; ``Wc`` is (u, 3h). Checkpoints written before
  this option existed are this form.

Dropout: ``dropout_p_hidden`` on the session GRU output, ``dropout_p_hidden_usr``
on the user GRU output and ``dropout_p_init`` on the initialisation vector;
the carried states are the values after dropout.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from gru4rec_jax import model as model_lib

__all__ = ["HRNNConfig", "HRNN_MODES", "USER_INPUTS", "init_params", "zero_carry", "dropout_masks", "begin_step", "forward"]

HRNN_MODES = ("init", "all")
USER_INPUTS = ("gates", "all_blocks")  # where HRNN-all's user state enters (module docstring)


@dataclasses.dataclass(frozen=True)
class HRNNConfig:
    """Shape of an HRNN: the session network, the user GRU layers, the mode and (``all``) the user input."""

    session: model_lib.ModelConfig
    user_layers: tuple[int, ...] = (100,)
    mode: str = "init"
    user_input: str = "gates"  # all mode only: gates | all_blocks

    def __post_init__(self):
        if self.mode not in HRNN_MODES:
            raise ValueError(f"hrnn_mode must be one of {HRNN_MODES}, got {self.mode!r}")
        if self.user_input not in USER_INPUTS:
            raise ValueError(f"hrnn_user_input must be one of {USER_INPUTS}, got {self.user_input!r}")
        if not self.user_layers or min(self.user_layers) < 1:
            raise ValueError(f"user_layers must be positive sizes, got {self.user_layers}")

    @property
    def n_items(self) -> int:
        return self.session.n_items


def item_table_keys(key: jax.Array, config: HRNNConfig) -> dict:
    """The item tables' keys of :func:`init_params` (see ``model.item_table_keys``)."""
    return model_lib.item_table_keys(jax.random.split(key, 4)[0], config.session)


def init_params(key: jax.Array, config: HRNNConfig) -> dict:
    """GRU4Rec's parameters for the session network plus the user GRU and the init layer.

    ``params["layers"]`` is ``{"session": [...], "user": [...], "init": [...]}``.
    """
    key_session, key_user, key_init, key_context = jax.random.split(key, 4)
    params = model_lib.init_params(key_session, config.session)
    session_layers = params["layers"]
    user_top = config.user_layers[-1]
    user, d_in = [], config.session.layers[-1]
    for h, k in zip(config.user_layers, jax.random.split(key_user, len(config.user_layers))):
        k_x, k_rz, k_h = jax.random.split(k, 3)
        user.append({
            "Wx": model_lib._gate_blocks(k_x, d_in, h, 3),
            "Wrz": model_lib._gate_blocks(k_rz, h, h, 2),
            "Wh": model_lib._uniform(k_h, (h, h), h, h),
            "b": jnp.zeros((3 * h,), jnp.float32),
        })
        d_in = h
    init = [
        {"W": model_lib._uniform(k, (user_top, h), user_top, h), "b": jnp.zeros((h,), jnp.float32)}
        for h, k in zip(config.session.layers, jax.random.split(key_init, len(config.session.layers)))
    ]
    if config.mode == "all":
        # (u, 3h) for the candidate and both gates, (u, 2h) for the gates alone:
        # model.forward_step reads which from the width.
        blocks = 3 if config.user_input == "all_blocks" else 2
        session_layers[0]["Wc"] = model_lib._gate_blocks(key_context, user_top, config.session.layers[0], blocks)
    params["layers"] = {"session": session_layers, "user": user, "init": init}
    return params


def zero_carry(config: HRNNConfig, batch_size: int) -> dict:
    return {
        "session": model_lib.zero_hidden(config.session, batch_size),
        "user": [jnp.zeros((batch_size, h), jnp.float32) for h in config.user_layers],
    }


def dropout_masks(key, config: HRNNConfig, batch_size: int, p_embed, p_hidden, p_user, p_init) -> dict:
    """Keep masks of one training step (None where a rate is 0); rates as in ``model.keep_mask``."""
    key_session, key_user, key_init = jax.random.split(key, 3)

    def masks(key, sizes, rate):
        keys = jax.random.split(key, len(sizes))
        return [model_lib.keep_mask(k, rate, (batch_size, h)) for k, h in zip(keys, sizes)]

    return {
        "session": model_lib.dropout_masks(key_session, config.session, batch_size, p_embed, p_hidden),
        "user": masks(key_user, config.user_layers, p_user),
        "init": masks(key_init, config.session.layers, p_init),
    }


def begin_step(dense: dict, carry: dict, user_start, session_start, masks=None, p_user=0.0, p_init=0.0) -> dict:
    """Applies the step's flags: a new user zeroes both states; a new session of the same
    user first updates the user GRU with the finished session's last state, then
    initialises the session state from the new user state. Other lanes are unchanged."""
    masks = masks or {"user": [None] * len(dense["user"]), "init": [None] * len(dense["init"])}
    x = carry["session"][-1]
    new_user = []
    for layer, c, keep in zip(dense["user"], carry["user"], masks["user"]):
        x = model_lib._apply_dropout(model_lib.gru_cell(layer, x @ layer["Wx"] + layer["b"], c), keep, p_user)
        new_user.append(x)
    init = [model_lib._apply_dropout(jnp.tanh(x @ p["W"] + p["b"]), keep, p_init)
            for p, keep in zip(dense["init"], masks["init"])]

    def choose(new, old):
        return jnp.where(user_start[:, None], 0.0, jnp.where(session_start[:, None], new, old))

    return {
        "session": [choose(n, o) for n, o in zip(init, carry["session"])],
        "user": [choose(n, o) for n, o in zip(new_user, carry["user"])],
    }


def forward(dense: dict, input_rows, carry: dict, config: HRNNConfig, masks=None, p_embed=0.0, p_hidden=0.0):
    """One step of the session GRU (fed the user state too in ``all`` mode)."""
    output, session = model_lib.forward_step(
        dense["session"], input_rows, carry["session"], config.session,
        masks=None if masks is None else masks["session"],
        dropout_p_embed=p_embed, dropout_p_hidden=p_hidden,
        context=carry["user"][-1] if config.mode == "all" else None,
    )
    return output, {"session": session, "user": carry["user"]}

"""One interface over the recurrent networks, for the training and evaluation loops.

A network says which per-step flags of the schedule it reads, how its carried
state starts, how a step's flags change that state (``begin``, differentiable
in the parameters: HRNN's user GRU learns through it), and how a step runs
(``forward``). GRU4Rec zeroes a lane's state on its ``reset`` flag; HRNN
reads ``user_start`` and ``session_start``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Union

import jax.numpy as jnp

from gru4rec_jax import hrnn as hrnn_lib
from gru4rec_jax import model as model_lib

__all__ = ["Network", "network_for"]

AnyModelConfig = Union[model_lib.ModelConfig, hrnn_lib.HRNNConfig]


@dataclasses.dataclass(frozen=True)
class Network:
    items: model_lib.ModelConfig  # the item-facing part: catalogue size, embedding mode
    flags: tuple[str, ...]
    init_params: Callable[[Any], dict]
    item_table_keys: Callable[[Any], dict]  # key -> {table name: (key, h, blocks)} as init_params draws them
    zero_carry: Callable[[int], Any]
    draw_masks: Callable[[Any, int], Any]
    begin: Callable[..., Any]  # (dense, carry, flags: dict, masks or None) -> carry
    forward: Callable[..., Any]  # (dense, input_rows, carry, masks or None) -> (output, carry)


def network_for(
    config: AnyModelConfig,
    *,
    dropout_p_embed: float = 0.0,
    dropout_p_hidden: float = 0.0,
    dropout_p_hidden_usr: float = 0.0,
    dropout_p_init: float = 0.0,
    reset_flag: str = "reset",
) -> Network:
    """The network of ``config``; the rates only act where masks are passed (training).

    ``reset_flag`` names the flag that zeroes a GRU4Rec lane: ``reset`` on the
    session-parallel schedule, ``user_start`` to run GRU4Rec over users'
    concatenated sessions on the user-parallel schedule.
    """
    if isinstance(config, hrnn_lib.HRNNConfig):
        return Network(
            items=config.session,
            flags=("user_start", "session_start"),
            init_params=lambda key: hrnn_lib.init_params(key, config),
            item_table_keys=lambda key: hrnn_lib.item_table_keys(key, config),
            zero_carry=lambda b: hrnn_lib.zero_carry(config, b),
            draw_masks=lambda key, b: hrnn_lib.dropout_masks(
                key, config, b, dropout_p_embed, dropout_p_hidden, dropout_p_hidden_usr, dropout_p_init),
            begin=lambda dense, carry, flags, masks: hrnn_lib.begin_step(
                dense, carry, flags["user_start"], flags["session_start"], masks,
                dropout_p_hidden_usr, dropout_p_init),
            forward=lambda dense, rows, carry, masks: hrnn_lib.forward(
                dense, rows, carry, config, masks, dropout_p_embed, dropout_p_hidden),
        )
    return Network(
        items=config,
        flags=(reset_flag,),
        init_params=lambda key: model_lib.init_params(key, config),
        item_table_keys=lambda key: model_lib.item_table_keys(key, config),
        zero_carry=lambda b: model_lib.zero_hidden(config, b),
        draw_masks=lambda key, b: model_lib.dropout_masks(key, config, b, dropout_p_embed, dropout_p_hidden),
        begin=lambda dense, carry, flags, masks: [jnp.where(flags[reset_flag][:, None], 0.0, h) for h in carry],
        forward=lambda dense, rows, carry, masks: model_lib.forward_step(
            dense, rows, carry, config, masks=masks,
            dropout_p_embed=dropout_p_embed, dropout_p_hidden=dropout_p_hidden),
    )

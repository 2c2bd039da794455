"""Learning-rate schedules by name (Config.lr_schedule, --lr-schedule), for train.make_optimizer.

  constant  config.learning_rate throughout, with the tutorial's Keras-form Adam (train.keras_adam):
            the default, unchanged from before schedules existed
  burda     the IWAE paper's protocol (Burda, Grosse & Salakhutdinov 2016, section 5): 3^i epochs at
            1e-3 * 10^(-i/7) for i = 0..7, 3,280 epochs in all, with plain Adam (optax.adam,
            b1 0.9, b2 0.999, eps 1e-4). Its base is fixed: --learning-rate other than 1e-3 is
            refused; --epochs may stop before 3,280 (a prefix of the schedule), not run past it.

A schedule's learning rate is a function of the optimizer step (the number of updates already
taken, kept in the optimizer state), so a resumed run continues mid-stage exactly. Register another
with `register_schedule(name, Schedule(...))`, from any module.
"""

import dataclasses
from typing import Callable

from vae_jax.config import Config
from vae_jax.errors import UserError

LearningRate = float | Callable[[object], object]  # a number, or optimizer step -> learning rate


@dataclasses.dataclass(frozen=True)
class Schedule:
  # (config, steps_per_epoch) -> the learning rate
  learning_rate: Callable[[Config, int | None], LearningRate]
  adam_eps: float | None = None  # plain optax.adam with this eps; None: train.keras_adam
  check: Callable[[Config], None] = lambda config: None  # raises UserError for what it refuses
  needs_steps_per_epoch: bool = False  # True: an optimizer built without it only inits
  learning_rate_default: float | None = None  # --learning-rate when not given; None: Config's


SCHEDULES: dict[str, Schedule] = {}


def register_schedule(name: str, schedule: Schedule) -> Schedule:
  if name in SCHEDULES:
    raise ValueError(f"a learning-rate schedule named {name!r} is already registered")
  SCHEDULES[name] = schedule
  return schedule


def get_schedule(name: str) -> Schedule:
  if name not in SCHEDULES:
    raise UserError(f"--lr-schedule {name!r} is not registered; "
                    f"known: {', '.join(sorted(SCHEDULES))}")
  return SCHEDULES[name]


register_schedule("constant", Schedule(lambda config, steps_per_epoch: config.learning_rate))

# The IWAE protocol: stage i lasts 3^i epochs at BURDA_BASE * 10^(-i/7).
BURDA_BASE = 1e-3
BURDA_STAGES = 8
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))  # 3,280
# The first epoch (0-based) of stages 1..7: (3^i - 1) / 2.
BURDA_STAGE_STARTS = tuple((3**i - 1) // 2 for i in range(1, BURDA_STAGES))


def burda_rates(base: float = BURDA_BASE) -> tuple[float, ...]:
  """The stages' learning rates base * 10^(-i/7), i = 0..7."""
  return tuple(base * 10 ** (-i / 7) for i in range(BURDA_STAGES))


def burda_learning_rate(step, steps_per_epoch: int):
  """The learning rate of optimizer step `step` (0-based) under the IWAE protocol."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel  # a flag error needs no JAX
  epoch = step // steps_per_epoch
  stage = jnp.searchsorted(jnp.asarray(BURDA_STAGE_STARTS), epoch, side="right")
  return jnp.asarray(burda_rates(), jnp.float32)[stage]


def _check_burda(config: Config) -> None:
  if config.learning_rate != BURDA_BASE:
    raise UserError(f"--lr-schedule burda runs at the IWAE paper's base learning rate "
                    f"{BURDA_BASE:g}; got --learning-rate {config.learning_rate:g} (leave it unset)")
  if config.epochs > BURDA_EPOCHS:
    raise UserError(f"--lr-schedule burda ends after {BURDA_EPOCHS} epochs; got --epochs "
                    f"{config.epochs}")


def _burda(config: Config, steps_per_epoch: int) -> LearningRate:
  del config
  return lambda step: burda_learning_rate(step, steps_per_epoch)


register_schedule("burda", Schedule(_burda, adam_eps=1e-4, check=_check_burda,
                                    needs_steps_per_epoch=True, learning_rate_default=BURDA_BASE))

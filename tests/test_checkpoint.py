"""Checkpoints refuse to restore into a model they do not fit, naming every difference."""

import jax
import jax.numpy as jnp
import pytest

from jaxpose import checkpoint as checkpoint_lib
from jaxpose import step as step_lib
from jaxpose.errors import UserError


def _state(params, batch_stats):
  return step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                             batch_stats=batch_stats, opt_state=())


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def test_a_changed_model_is_refused_with_the_differences_listed(tmp_path):
  saved = _state({"conv": {"kernel": jnp.ones((3, 3, 3, 8)), "bias": jnp.zeros((8,))},
                  "head": {"kernel": jnp.ones((1, 1, 8, 17))}},
                 {"bn": {"mean": jnp.zeros((8,))}})
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, keep=1)
  checkpointer.manager.save(1, args=checkpoint_lib.ocp.args.Composite(
      state=checkpoint_lib.ocp.args.StandardSave(saved)))
  checkpointer.wait()
  # The same model restores.
  restored = checkpointer.restore_state_only(1, _abstract(saved))
  assert restored.params["head"]["kernel"].shape == (1, 1, 8, 17)
  # A wider conv, a renamed head and a dropped BatchNorm statistic do not.
  changed = _state({"conv": {"kernel": jnp.ones((3, 3, 3, 16)), "bias": jnp.zeros((8,))},
                    "final": {"kernel": jnp.ones((1, 1, 8, 17))}}, {})
  with pytest.raises(UserError) as caught:
    checkpointer.restore_state_only(1, _abstract(changed))
  message = str(caught.value)
  assert "\n" not in message
  assert "4 differences" in message, message
  assert "missing params/final/kernel (1, 1, 8, 17)" in message
  assert "unexpected params/head/kernel (1, 1, 8, 17)" in message
  assert "params/conv/kernel: saved (3, 3, 3, 8), model (3, 3, 3, 16)" in message
  assert "unexpected batch_stats/bn/mean (8,)" in message
  checkpointer.close()


def test_another_process_count_cannot_resume_the_input_pipeline(tmp_path):
  """The grain state is saved per process (`process_<i>-of-<n>.json`): a checkpoint written by
  2 processes is refused to this 1-process run, naming both counts and the way out."""
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, keep=1)
  data = checkpointer.directory / "7" / "data"
  data.mkdir(parents=True)
  for index in range(2):
    (data / f"process_{index}-of-2.json").write_text("{}")
  with pytest.raises(UserError) as caught:
    checkpointer._check_process_count(7)  # pylint: disable=protected-access
  assert "written by 2 processes, resumed with 1" in str(caught.value)
  assert "--mode eval" in str(caught.value)
  (data / "process_1-of-2.json").unlink()
  (data / "process_0-of-2.json").rename(data / "process_0-of-1.json")
  checkpointer._check_process_count(7)  # pylint: disable=protected-access
  checkpointer.close()

"""`DevicePrefetch`: batches put on the mesh ahead of the step, in order, with a checkpointed
position that is the next batch a step reads, not the read-ahead's."""

import json

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpose import checkpoint as checkpoint_lib
from jaxpose import mesh as mesh_lib
from jaxpose.device_prefetch import DevicePrefetch


class _Counter:
  """Batch n holds n; its state is the count read so far. With `view_state`, get_state
  returns the one dict it keeps updating (a prefetcher must copy it)."""

  def __init__(self, view_state: bool = False):
    self.state, self.view_state = {"read": 0}, view_state

  def __next__(self):
    n = self.state["read"]
    self.state["read"] += 1
    return {"image": np.full((jax.device_count(), 2), n, np.int32)}

  def get_state(self):
    return self.state if self.view_state else dict(self.state)

  def set_state(self, state):
    self.state = dict(state)


@pytest.fixture(scope="module")
def mesh():
  return mesh_lib.make_data_mesh()


@pytest.mark.parametrize("depth", [0, 1, 3])
@pytest.mark.parametrize("view_state", [False, True])
def test_batches_in_order_and_position_of_the_next_one_read(mesh, depth, view_state):
  host = _Counter(view_state)
  batches = DevicePrefetch(host, mesh, depth)
  for n in range(5):
    batch = next(batches)
    assert isinstance(batch["image"], jax.Array)
    assert batch["image"].sharding == mesh_lib.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(batch["image"]), n)
  assert host.state["read"] == 5 + depth  # read ahead...
  assert json.loads(batches.get_state()) == {"read": 5}  # ...but the position is batch 5's
  batches.set_state(json.dumps({"read": 2}).encode())  # a restore drops the read-ahead
  assert [int(np.asarray(next(batches)["image"])[0, 0]) for _ in range(3)] == [2, 3, 4]


def test_negative_depth_is_refused(mesh):
  with pytest.raises(ValueError, match="depth must be >= 0"):
    DevicePrefetch(_Counter(), mesh, -1)


@flax.struct.dataclass
class _State:
  params: dict
  batch_stats: dict


def test_a_checkpoint_resumes_at_the_next_unread_batch(mesh, tmp_path):
  """Through jaxpose's Checkpointer (orbax + grain's handler) and a real grain iterator."""
  def grain_batches():
    return iter(grain.MapDataset.range(100).map(lambda i: {"image": np.full(
        (jax.device_count(), 2), i, np.int32)}).to_iter_dataset())

  state = _State(params={"w": jnp.ones(3)}, batch_stats={})
  checkpointer = checkpoint_lib.Checkpointer(tmp_path, keep=1)
  batches = DevicePrefetch(grain_batches(), mesh, depth=2)
  seen = [int(np.asarray(next(batches)["image"])[0, 0]) for _ in range(4)]
  checkpointer.save(4, state, batches)
  checkpointer.wait()
  resumed = DevicePrefetch(grain_batches(), mesh, depth=2)
  checkpointer.restore(4, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state),
                       resumed)
  checkpointer.close()
  after = [int(np.asarray(next(resumed)["image"])[0, 0]) for _ in range(3)]
  assert seen + after == list(range(7))

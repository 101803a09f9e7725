"""The crop frame of persons whose dataset gives it (MPII, LSP): no box to derive it from."""

import dataclasses

import grain
import numpy as np

from jaxpose.data import transforms


@dataclasses.dataclass(frozen=True)
class UseGivenCenterScale(grain.transforms.Map):
  """Reads `center_xy`, `scale_wh` (the reader's crop frame, e.g. HRNet's MPII centre and
  1.25 x scale); adds `rotation_deg` 0. Stands where `transforms.BoxToCenterScale` stands for
  boxed records: the frame is used as given, not padded or reshaped to the input's aspect."""

  def map(self, record: dict) -> dict:
    return {**record, "center_xy": np.asarray(record["center_xy"], np.float32),
            "scale_wh": np.asarray(record["scale_wh"], np.float32),
            "rotation_deg": np.float32(0.0)}


def crop_frame(source, input_wh: tuple[int, int], box_padding: float) -> grain.transforms.Map:
  """`transforms.BoxToCenterScale` for sources of boxes (COCO); `UseGivenCenterScale` for
  sources whose records carry no box (MPII, LSP: their reader's frame must not be re-derived)."""
  if len(source) and "box_xywh" not in source[0]:
    return UseGivenCenterScale()
  return transforms.BoxToCenterScale(input_wh, box_padding)

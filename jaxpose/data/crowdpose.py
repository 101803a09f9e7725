"""CrowdPose reader: `crowdpose_{train,val,test,trainval}.json` (COCO-style, 14 keypoints).

The files (Jeff-sjtu/CrowdPose, read by DEKR from `json/` with images in `images/`)
differ from COCO's by 14 keypoints, no `area` or segmentation in the annotations, a
category `skeleton` copied from COCO (indices up to 17, so it is ignored), and a
`crowdIndex` in [0, 1] per image, by which crowdpose-api buckets AP into easy (< 0.2),
medium and hard (>= 0.8). Persons are read by `CocoPersonBoxes` (same filters: crowd
regions and persons without labelled keypoints are dropped); each record also carries its
image's `crowd_index`.
"""

import os
from pathlib import Path

import numpy as np

from jaxpose.data import coco
from jaxpose.data import keypoints as keypoints_lib
from jaxpose.errors import DatasetError


class CrowdPoseBoxes:
  """Random-access source over the labelled persons of one CrowdPose split.

  Validates on open what `CocoPersonBoxes` validates, plus: the person category's keypoint
  names are the spec's (in order), and every image has a numeric `crowdIndex` in [0, 1].
  Records: `CocoPersonBoxes`'s plus `crowd_index` (float32).
  """

  def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
               spec: keypoints_lib.KeypointSpec):
    self.annotation_file = Path(annotation_file)
    self.image_dir = Path(image_dir)
    self.spec = spec
    self._persons = coco.CocoPersonBoxes(self.annotation_file, self.image_dir, spec)
    # Read again for what the COCO reader does not keep; CrowdPose files are small (no
    # segmentation), and the COCO reader stays the one definition of a person.
    data = coco.load_json(self.annotation_file)
    self._check_keypoint_names(data["categories"])
    crowd_index = self._crowd_index_by_image(data["images"])
    self.records = self._persons.records
    self.scan = self._persons.scan
    self._crowd_index = np.array([crowd_index[r.image_id] for r in self.records], np.float32)

  def _check_keypoint_names(self, categories: list) -> None:
    person = next(c for c in categories if isinstance(c, dict) and c.get("name") == "person")
    if list(person["keypoints"]) != list(self.spec.names):
      raise DatasetError(f"{self.annotation_file}: categories: person keypoints "
                         f"{person['keypoints']} are not layout {self.spec.dataset!r} "
                         f"{list(self.spec.names)}")

  def _crowd_index_by_image(self, images: list) -> dict[int, float]:
    crowd_index = {}
    for i, image in enumerate(images):
      entry = f"{self.annotation_file}: images[{i}] (id {image.get('id')})"
      if "crowdIndex" not in image:
        raise DatasetError(f"{entry}: missing field 'crowdIndex' (not a CrowdPose file?)")
      value = image["crowdIndex"]
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise DatasetError(f"{entry}: 'crowdIndex' {value!r} is not a number in [0, 1]")
      crowd_index.setdefault(image["id"], float(value))
    return crowd_index

  def __len__(self) -> int:
    return len(self.records)

  def __getitem__(self, index: int) -> dict:
    return {**self._persons[index], "crowd_index": self._crowd_index[index]}

  def __repr__(self) -> str:
    return f"CrowdPoseBoxes({self.annotation_file}, {len(self)} persons)"

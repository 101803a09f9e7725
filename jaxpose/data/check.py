"""`python -m jaxpose.data.check`: lists every problem of a config's dataset, without training.

  python -m jaxpose.data.check --config configs/default.py:smoke
  python -m jaxpose.data.check --config configs/default.py --config.data.source=coco \
      --config.data.root=/data/coco --config.data.train_split=train2017 --split train

Reads each annotation file with the reader's own checks (`pipeline.scan_split`, i.e.
`jaxpose.data.faults`) and decodes once every image that training would read, with the
decoder's own checks (`image_io.read_image`), so it reports exactly what training would
reject, skip or filter. Prints one line per fault (`file: entry: what [kind]`), then a
table per split with the count of each kind. Exit status: 1 if there is any fault, 0 if
there is none (filtered persons are not faults), 2 for a bad command line or config.
"""

import collections
import concurrent.futures
import os
import sys

from absl import flags

from jaxpose import cli as cli_lib
from jaxpose.data import faults
from jaxpose.data import image_io
from jaxpose.errors import UserError

_SPLIT = flags.DEFINE_enum(
    "split", "all", ["train", "val", "all"],
    "Which of the config's splits to scan (data.train_split, data.val_split).")


def _fail(message: str) -> None:
  cli_lib.fail("jaxpose.data.check", message)


def image_faults(records, num_threads: int) -> list[faults.Fault]:
  """Decodes each image of `records` once; a Fault per unusable image, counting its persons."""
  persons = collections.Counter((r.image_path, r.image_id, tuple(r.image_wh)) for r in records)
  images = sorted(persons)
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    results = pool.map(lambda image: image_io.read_image(image[0], image[2])[1], images)
    return [faults.Fault(problem[0], path, f"image id {image_id}", problem[1],
                         persons=persons[path, image_id, wh])
            for (path, image_id, wh), problem in zip(images, results) if problem]


def _outcome(kind: str) -> str:
  if kind in faults.REJECTED:
    return "rejects the split at start-up"
  if kind in faults.SKIPPED_PERSON:
    return "person skipped at start-up"
  if kind in faults.SKIPPED_SAMPLE:
    return "samples skipped when read"
  return "filtered as HRNet (not a fault)"


def _summary(split: str, scan: faults.AnnotationScan, found: list[faults.Fault]) -> list[str]:
  lines = [f"{split}: {scan.annotation_file}"]
  if not scan.rejected:
    on_bad_images = sum(f.persons for f in found if f.kind in faults.SKIPPED_SAMPLE)
    num_images = len({r.image_path for r in scan.records})
    lines.append(f"  {len(scan.records)} persons on {num_images} images pass the start-up "
                 f"checks; {on_bad_images} of them are on images that fail to read")
  entries = collections.Counter(f.kind for f in found)
  persons = collections.Counter()
  for f in found:
    persons[f.kind] += f.persons
  rows = [(kind, str(entries[kind]), "-" if kind in faults.REJECTED else str(persons[kind]))
          for kind in sorted(entries)]
  rows += [(kind, "-", str(count)) for kind, count in sorted(scan.filtered.items())]
  if rows:
    lines.append(f"  {'kind':<28}{'entries':>8}{'persons':>9}  outcome")
    lines += [f"  {kind:<28}{n:>8}{p:>9}  {_outcome(kind)}" for kind, n, p in rows]
  else:
    lines.append("  no problems")
  return lines


def check(config, splits: list[str]) -> int:
  """Prints every fault of `splits` and a summary; returns the number of faults."""
  # Imported here, not at the top, so `--help` and flag errors do not wait for jax.
  from jaxpose.data import pipeline  # pylint: disable=g-import-not-at-top
  summaries, total = [], 0
  for split in splits:
    scan = pipeline.scan_split(config, split)
    found = scan.rejected + scan.skipped
    if not scan.rejected:  # a rejected split has no trustworthy image list
      found += image_faults(scan.records, os.cpu_count() or 1)
    for fault in found:
      print(f"{fault} [{fault.kind}]", flush=True)
    summaries += _summary(split, scan, found)
    total += len(found)
  print("\n".join(["summary:", *summaries, f"{total} fault(s)"]), flush=True)
  return total


def main(argv: list[str], config_flag) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}; see --help")
  config = config_flag.value
  names = {"train": [config.data.train_split], "val": [config.data.val_split],
           "all": [config.data.train_split, config.data.val_split]}[_SPLIT.value]
  try:
    num_faults = check(config, list(dict.fromkeys(names)))
  except UserError as e:
    _fail(str(e))
  sys.exit(1 if num_faults else 0)


def cli() -> None:
  cli_lib.run("jaxpose.data.check", main)


if __name__ == "__main__":
  cli()

"""Orbax checkpoints on object storage: committed by a marker, and on s3:// through tensorstore.

A bucket has no rename, so a step there is written in place and committed by
N/commit_success.txt (`atomicity_for`); a step without it is never listed, so a torn write is
invisible to resume. Orbax chooses that by itself for gs:// only.

orbax-checkpoint 0.12 builds the tensorstore specs of a checkpoint itself and knows one remote
driver: GCS, for a path starting with gs://; any other path goes to tensorstore's local-file
driver (an s3:// one fails, "Checkpoint path should be absolute"). It has no hook to choose the
kvstore (google/orbax#872 asks for one; google/orbax#2739, S3 support, is not merged), and a
custom array handler would not reach the OCDBT merge, which builds specs through the same
functions. So `install_s3` replaces the three private functions of
orbax.checkpoint._src.serialization.tensorstore_utils and ...path.gcs_utils that make that
choice, for s3:// paths only (every other path goes to Orbax's own): Orbax then builds for S3
exactly what it builds for GCS (OCDBT, per-process databases, the merge), with the `s3` kvstore
in place of `gcs`. The patch is checked against the Orbax series it was written for: another
one is refused with a message, never patched blindly.

tensorstore's S3 driver reads credentials as the AWS SDKs do (AWS_ACCESS_KEY_ID…, AWS_PROFILE,
the instance's role; keys in the environment are named to it, as its default chain logs an
error for each ~/.aws file it lacks) but not the endpoint: AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL (what boto3 and s3fs read, for MinIO, Ceph, moto…) are passed to it here,
with AWS_REGION or AWS_DEFAULT_REGION; with neither, it finds AWS itself and asks the bucket
its region.
"""

from __future__ import annotations

import importlib.metadata
import os

from lmjax.errors import UserError
from lmjax.storage import PathLike, is_remote, url_scheme

ORBAX_SERIES = "0.12."  # the orbax-checkpoint releases whose private functions this replaces
_installed = False


def atomicity_for(directory: PathLike):
  """How Orbax commits a step under `directory` (its AtomicityOptions): in place then
  commit_success.txt on a bucket (installing the S3 route for s3://); on a local disk, under a
  temporary name then renamed."""
  import orbax.checkpoint as ocp  # here: lmjax.run.run_dir needs only `install_s3`
  if url_scheme(directory) == "s3":
    install_s3()
  mode = ocp.options.AtomicityMode
  return ocp.options.AtomicityOptions(
      mode=mode.COMMIT_FILE if is_remote(directory) else mode.AUTO)


def s3_kvstore(url: str) -> dict:
  """tensorstore's kvstore spec for `url` (s3://bucket/key), with the endpoint and region the
  environment names, if any."""
  bucket, _, key = url.removeprefix("s3://").partition("/")
  spec = {"driver": "s3", "bucket": bucket, "path": key}
  endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
  region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
  if endpoint:
    spec["endpoint"] = endpoint.rstrip("/")
  if region:
    spec["aws_region"] = region
  if os.environ.get("AWS_ACCESS_KEY_ID"):  # what the default chain takes first, without it
    spec["aws_credentials"] = {"type": "environment"}  # logging 5 errors for a missing ~/.aws
  return spec


def install_s3(*, what: str = "run directory") -> None:
  """Lets Orbax write and read checkpoints on s3:// (idempotent). UserError naming `what` if
  the installed orbax-checkpoint is not the series this patch was written for."""
  global _installed
  if _installed:
    return
  version = importlib.metadata.version("orbax-checkpoint")
  from orbax.checkpoint._src.path import gcs_utils
  from orbax.checkpoint._src.serialization import tensorstore_utils
  needed = ((tensorstore_utils, "_normalize_path"), (tensorstore_utils, "_use_gcs_driver"),
            (gcs_utils, "get_kvstore_for_gcs"))
  if not version.startswith(ORBAX_SERIES) or not all(hasattr(m, n) for m, n in needed):
    raise UserError(f"{what}: checkpoints on s3:// need orbax-checkpoint {ORBAX_SERIES}x (lmjax "
                    f"routes them to tensorstore's S3 driver through its internals), not "
                    f"{version}: install orbax-checkpoint~=0.12.8, or put the run directory "
                    f"on gs://, a local disk or a mounted bucket (mountpoint-s3, s3fs-fuse).")
  normalize, use_gcs, gcs_kvstore = (getattr(m, n) for m, n in needed)

  def _normalize_path(path: str) -> str:  # os.path.normpath makes s3://b/k s3:/b/k
    return normalize(path).replace("s3:/", "s3://", 1) if path.startswith("s3://") \
        else normalize(path)

  def _use_gcs_driver(directory: str) -> bool:  # "a bucket's driver", not the local-file one
    return directory.startswith("s3://") or use_gcs(directory)

  def get_kvstore_for_gcs(path: str) -> dict:
    return s3_kvstore(path) if path.startswith("s3://") else gcs_kvstore(path)

  tensorstore_utils._normalize_path = _normalize_path
  tensorstore_utils._use_gcs_driver = _use_gcs_driver
  gcs_utils.get_kvstore_for_gcs = get_kvstore_for_gcs
  _installed = True
